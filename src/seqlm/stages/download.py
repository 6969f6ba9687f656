"""The download stage: the corpus named by ``data.source`` → data/raw/{train,valid,test}.txt + manifest."""

from __future__ import annotations

import tempfile
from pathlib import Path

from seqlm.config import Config
from seqlm.core.atomic import atomic_dir, remove, temporary_prefix, write_json
from seqlm.core.paths import SPLITS, Paths
from seqlm.data import corpus, sources


def run_download(cfg: Config, paths: Paths) -> None:
    """Write the normalised, split corpus and its manifest atomically; print one line per split."""
    # Before anything is removed: a source inside data/raw would be deleted with it.
    sources.refuse_outputs(cfg, paths)
    try:
        with (
            atomic_dir(paths.raw_dir) as out,
            # named like atomic_dir's own leftovers, so a killed download's scratch is cleared too
            tempfile.TemporaryDirectory(
                prefix=f"{temporary_prefix(paths.raw_dir)}download", suffix=".tmp", dir=out.parent
            ) as scratch,
        ):
            source = sources.resolve(cfg, paths, Path(scratch))
            stats, method = corpus.write_splits(source, cfg, out)
            write_json(out / paths.manifest.name, corpus.manifest(cfg, source, method, stats))
    except BaseException:
        remove(paths.raw_dir)  # an old data/raw must not outlive a failed run and be trusted
        raise
    for split in SPLITS:
        print(corpus.summary(split, stats[split]))
