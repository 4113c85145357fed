"""Delimiters: output items that end at any of several bytes (`--delimiters`, `--null`, SPEC §15).

Pure, like `framing`: every delimiter byte is mapped onto the first one with one `bytes.translate`,
and `LineSplitter` splits on that byte. Delimiters are never sent, so nothing else of the output
changes, and the splitter's size limit and cutting stay exactly those of lines.
"""

from __future__ import annotations

from app.framing import LineSplitter

__all__ = ["DelimiterSplitter"]


class DelimiterSplitter(LineSplitter):
    """Split a byte stream into items ending at any byte of ``delimiters`` (removed); items over ``max_size`` cut."""

    __slots__ = ("_table",)

    def __init__(self, max_size: int, delimiters: bytes) -> None:
        if not delimiters:
            raise ValueError("delimiters must not be empty")
        sep = delimiters[:1]
        super().__init__(max_size, sep)
        # None when there is one delimiter: the chunk splits as it is.
        self._table = bytes.maketrans(delimiters, sep * len(delimiters)) if len(delimiters) > 1 else None

    def feed(self, chunk: bytes) -> list[bytes]:
        """Return the items completed by ``chunk``, and any max_size pieces of an item that is too long."""
        return super().feed(chunk if self._table is None else chunk.translate(self._table))
