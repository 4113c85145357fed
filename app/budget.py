"""InboundBudget: what all clients together may have buffered on the way in, server-wide.

Two kinds of bytes count: parts of messages a connection has read but not yet handed over
(`hold`, from app.connection's protocol), and what rooms have written to children's input and the
children have not read yet (`charge`, from app.room). Past `limit`, every connection holding part
of a message stops reading (`pause_for_budget`), except one — the largest holder — that goes on
so that some message always completes, as long as children's input alone is under the limit. Once
the total is back under half the limit, all read again. A connection that leaves releases what it
held at once. Pure bookkeeping: no I/O, no clock.
"""

from __future__ import annotations

from typing import Protocol


class Holder(Protocol):
    def pause_for_budget(self) -> None: ...

    def resume_for_budget(self) -> None: ...


class InboundBudget:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.peak = 0  # the highest total so far (tests, and a figure worth knowing)
        self.over = False
        self.children_total = 0  # of total: children's unread input
        self._held: dict[Holder, int] = {}
        self._children: dict[object, int] = {}
        self._paused: set[Holder] = set()
        self._runner: Holder | None = None

    def hold(self, holder: Holder, held: int) -> None:
        """`holder` now holds `held` bytes of unfinished messages (0: none, or it left)."""
        old = self._held.pop(holder, 0)
        if held:
            self._held[holder] = held
        else:
            self._paused.discard(holder)
            if self._runner is holder:
                self._runner = None
        self.total += held - old
        if self.total > self.peak:
            self.peak = self.total
        self._check(holder if held > old else None)

    def charge(self, key: object, nbytes: int) -> None:
        """Room `key`'s child has `nbytes` of input not read yet."""
        old = self._children.pop(key, 0)
        if nbytes:
            self._children[key] = nbytes
        self.total += nbytes - old
        self.children_total += nbytes - old
        if self.total > self.peak:
            self.peak = self.total
        self._check(None)

    def _check(self, grew: Holder | None) -> None:
        if self.over and self.total <= self.limit // 2:
            self.over = False
            self._runner = None
            paused, self._paused = self._paused, set()
            for holder in paused:
                holder.resume_for_budget()
            return
        if not self.over:
            if self.total <= self.limit:
                return
            self.over = True
            for holder in list(self._held):
                self._pause(holder)
        elif grew is not None and grew is not self._runner:
            self._pause(grew)
        if self._runner is None and self._paused and self.children_total < self.limit:
            self._runner = runner = max(self._paused, key=lambda h: self._held.get(h, 0))
            self._paused.discard(runner)
            runner.resume_for_budget()

    def _pause(self, holder: Holder) -> None:
        if holder is not self._runner and holder not in self._paused:
            self._paused.add(holder)
            holder.pause_for_budget()
