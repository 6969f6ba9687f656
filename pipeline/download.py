"""DVC stage `download`: the corpus named by data.source -> data/raw/{train,valid,test}.txt + manifest.json."""
from seqlm.cli import stage_main

if __name__ == "__main__":
    stage_main("download")
