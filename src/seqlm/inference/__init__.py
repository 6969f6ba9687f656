"""Text from an exported model: sampling, streaming and next-word prediction (the ``Generator``).

Owns ``generator`` (the Generator: loading, sampling, streaming), ``words`` (the next-word beam search),
``text`` (prompt encoding with token healing, incremental detokenizing), ``pieces`` (what each tokenizer piece
may be drawn as), ``checks`` (limits on user input), ``fill`` (filling a blank with a cloze model: ``seqlm
fill``) and ``samples`` (the evaluate stage's samples.md). May import ``core``, ``config``, ``data`` and
``models`` only: locating a registered model is ``seqlm.registry``'s job.
"""
