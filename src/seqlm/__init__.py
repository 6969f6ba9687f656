"""seqlm: a reproducible pipeline for recurrent neural language models.

The library behind the DVC stages in pipeline/: packages by stage and concern over a small ground
floor (``core``, ``config``). docs/architecture.md draws the layers and says what each package may
import; this module holds only the version and imports nothing.
"""

__version__ = "0.1.0"
