"""DVC stage `tokenize`: data/raw -> data/tokenizer/spm.{model,vocab}, data/tokens/{split}.bin + meta.json."""
from seqlm.cli import stage_main

if __name__ == "__main__":
    stage_main("tokenize")
