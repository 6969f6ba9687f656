"""DVC stage `evaluate`: models/model + data/tokens + data/raw -> reports/eval/ (and the MLflow run)."""

import sys

if __name__ == "__main__":
    del sys.path[0]  # this folder holds tokenize.py, which must not shadow the standard library's tokenize
    from seqlm.cli import stage_main

    stage_main("evaluate")
