"""DVC stage `tokenize`: data/raw -> data/tokenizer/spm.{model,vocab}, data/tokens/{split}.bin + meta.json."""

import sys

if __name__ == "__main__":
    del sys.path[0]  # this folder holds tokenize.py, which must not shadow the standard library's tokenize
    from seqlm.cli import stage_main

    stage_main("tokenize")
