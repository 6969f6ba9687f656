import json

import numpy as np
import pytest
import torch

from seqlm.core.errors import SeqlmError
from seqlm.data.tokens import StreamWindows, window_length


def test_streams_cover_every_token_once_as_a_target():
    tokens = np.arange(1003, dtype=np.uint16)
    ds = StreamWindows(tokens, batch_size=4, bptt=7)
    targets = torch.cat([y.reshape(-1) for _, y, _ in ds]).numpy()
    # every token but the first is predicted exactly once; fewer than `streams` trailing tokens are dropped
    assert len(set(targets.tolist())) == len(targets)
    assert set(targets.tolist()) >= set(range(1, 1003 - 4))
    assert 0 not in set(targets.tolist())


def test_windows_are_consecutive_within_each_stream():
    tokens = np.arange(500, dtype=np.uint16)
    batches = list(StreamWindows(tokens, batch_size=3, bptt=10))
    (x0, y0, end0), (x1, _, _) = batches[0], batches[1]
    assert torch.equal(x0[:, 1:], y0[:, :-1])  # the target is the input shifted by one
    assert torch.equal(x1[:, 0], y0[:, -1])  # window 1 continues exactly where window 0 stopped
    assert end0 == 10


def test_ranks_read_disjoint_streams():
    tokens = np.arange(4000, dtype=np.uint16)
    seen = [
        torch.cat([x.reshape(-1) for x, _, _ in StreamWindows(tokens, 2, 16, rank=r, world_size=2)])
        for r in (0, 1)
    ]
    assert not set(seen[0].tolist()) & set(seen[1].tolist()) - {x for x in range(0, 4000, 1999)}


def test_resume_start_skips_consumed_windows_once():
    tokens = np.arange(1000, dtype=np.uint16)
    full = list(StreamWindows(tokens, 4, 10))
    ds = StreamWindows(tokens, 4, 10)
    ds.start = full[3][2]  # the column after window 3
    resumed = list(ds)
    assert torch.equal(resumed[0][0], full[4][0])
    assert len(resumed) == len(full) - 4
    assert len(list(ds)) == len(full)  # the next pass starts from the beginning again


def test_variable_bptt_is_deterministic_and_bounded():
    lengths = [window_length(64, True, seed=1, epoch=0, start=s) for s in range(0, 5000, 37)]
    assert lengths == [window_length(64, True, seed=1, epoch=0, start=s) for s in range(0, 5000, 37)]
    assert min(lengths) >= 5 and max(lengths) <= 128 and len(set(lengths)) > 3
    assert window_length(64, False, 1, 0, 0) == 64


def test_too_few_tokens_for_the_streams_is_a_clear_error():
    with pytest.raises(SeqlmError, match="lower train.batch_size"):
        StreamWindows(np.arange(10, dtype=np.uint16), batch_size=32, bptt=8)


def episodic_project(project, lines: list[str]):
    """Token files and meta.json for ``lines`` (one token per character, eos 2), as tokenize writes them."""
    paths = project.paths()
    paths.tokens_dir.mkdir(parents=True)
    ids = np.array([t for line in lines for t in [*(3 + ord(c) - ord("a") for c in line), 2]], dtype="<u2")
    for split in ("train", "valid", "test"):
        ids.tofile(paths.tokens(split))
    paths.tokens_meta.write_text(json.dumps({"dtype": "uint16", "eos_id": 2, "vocab_size": 40}))
    return paths


def test_the_episodic_data_module_reads_whole_lines_and_names_train_bptt(project):
    from seqlm.data.episodes import EpisodeBatches
    from seqlm.evaluation.episodic import Episodic
    from seqlm.training.datamodule import TokenDataModule

    paths = episodic_project(project, ["abc", "de", "f"] * 20)
    data = TokenDataModule(paths, batch_size=4, bptt=4, seed=1, protocol=Episodic())
    train = data.split("train", rank=0, world_size=1)
    assert isinstance(train, EpisodeBatches) and train.shuffle and not data.split("valid", 0, 1).shuffle
    assert data.split_windows("train") == 60 // 4  # the schedule's horizon counts episode batches
    x, y, end = next(iter(train))
    assert x.shape == (4, y.shape[1]) and y.shape[1] <= 4 and end == 1
    with pytest.raises(SeqlmError, match="more than train.bptt 3; raise train.bptt to at least 4"):
        TokenDataModule(paths, batch_size=4, bptt=3, protocol=Episodic()).split("train", 0, 1)
