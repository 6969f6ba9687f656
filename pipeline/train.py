"""DVC stage `train`: data/tokens -> models/model/, models/run.json, reports/train/ (resumes from models/last.ckpt)."""
from seqlm.cli import stage_main

if __name__ == "__main__":
    stage_main("train")
