"""User-facing errors: one line, no traceback (STYLE lesson 7)."""


class SeqlmError(Exception):
    """A problem the user can fix: bad params, bad input, a missing prerequisite.

    The CLI prints ``error: <message>`` and exits non-zero; anything else escaping is a bug.
    """
