"""Using a model from the command line: `seqlm generate`, `predict` and `fill`.

Each takes ``--model``, a model folder or a ``models:/`` URI; the URI is resolved here, in the registry
package (``resolve``), and the folder is handed to ``seqlm.inference``, which knows no registry.
`generate` and `predict` check the user's input first, so a bad prompt is reported without a download.
"""

from __future__ import annotations

import sys


def cli_generate(args) -> None:
    from seqlm.inference.checks import check_prompt, check_sampling
    from seqlm.inference.generator import Generator
    from seqlm.registry.resolve import resolve_model_dir

    check_prompt(args.prompt)
    check_sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    generator = Generator.from_dir(resolve_model_dir(args.model))
    for piece in generator.stream(
        args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed
    ):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()


def cli_predict(args) -> None:
    from seqlm.inference.checks import check_k, check_prompt
    from seqlm.inference.generator import Generator
    from seqlm.registry.resolve import resolve_model_dir

    check_prompt(args.text)
    check_k(args.k)
    generator = Generator.from_dir(resolve_model_dir(args.model))
    for word, prob in generator.next_words(args.text, args.k):
        print(f"{word}\t{prob:.4f}")


def cli_fill(args) -> None:
    import math

    from seqlm.inference.fill import Filler
    from seqlm.registry.commands import table
    from seqlm.registry.resolve import resolve_model_dir

    candidates = tuple(w for w in args.candidates.split(",") if w.strip())
    ranked = Filler.from_dir(resolve_model_dir(args.model)).fill(args.text, args.top, candidates)
    rows = [("rank", "word", "log-prob", "probability")]
    rows += [(str(n), word, f"{lp:.3f}", f"{math.exp(lp):.4f}") for n, word, lp in ranked]
    print(table(rows))
