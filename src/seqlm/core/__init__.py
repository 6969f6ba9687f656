"""The ground floor every other package stands on: where outputs live, how they are written, how
user errors are raised, file and git identities, and the figure style.

Owns ``paths`` (the only place an output path is spelled), ``atomic`` (whole-or-nothing writes),
``errors`` (``SeqlmError``: one line for the user, no traceback), ``hashing`` (sha256 of a file),
``git`` (the working tree's commit and state), ``redact`` (secrets out of recorded URLs) and
``figures`` (one Agg figure style). It imports
only the standard library (matplotlib lazily, inside ``figures``) and nothing else from seqlm.
"""
