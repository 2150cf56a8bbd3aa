"""Stop strings, matched on detokenised text as it streams, across token boundaries.

The engine sees token ids only, so the service layer finds stop strings. Text that could be the
start of a stop string is held back until the next piece shows whether it is one: the client never
sees a partial stop string, and never sees the stop string itself (OpenAI's behaviour).
"""

from __future__ import annotations

from collections.abc import Sequence


class StopStringMatcher:
    """`feed(text) -> (text safe to emit, stopped)`; `flush()` returns what is held when output ends."""

    def __init__(self, stops: Sequence[str]):
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        pending = self._held + text
        cut = self._first_stop(pending)
        if cut is not None:
            self._held = ""
            return pending[:cut], True
        keep = self._partial_stop_suffix(pending)
        self._held = pending[len(pending) - keep :]
        return pending[: len(pending) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held

    def _first_stop(self, text: str) -> int | None:
        found = [i for i in (text.find(s) for s in self._stops) if i >= 0]
        return min(found) if found else None

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest tail of `text` that begins some stop string (0 if none)."""
        longest = min(len(text), max(len(s) for s in self._stops) - 1)
        for size in range(longest, 0, -1):
            tail = text[-size:]
            if any(s.startswith(tail) for s in self._stops):
                return size
        return 0
