"""Sequence tracking on receipt: duplicates and out-of-order messages dropped, gaps counted.

Every message carries ``session`` and ``seq`` (:mod:`pulsebms.core.messaging.schema`). A
receiver keeps one :class:`SequenceTracker` per message kind and asks it about each message
of a sender (the key: e.g. the device name):

* the first message of a key, or of a new session of that key, is accepted;
* ``seq`` one above the last accepted is accepted;
* ``seq`` further above is accepted and the skipped numbers are counted as ``missing``
  (QoS 1 redelivers them only if the session persisted, so this is what was lost);
* ``seq`` equal to the last (a QoS 1 redelivery) is a ``duplicate``, below it ``out_of_order``:
  both are dropped.

Example:
    >>> t = SequenceTracker()
    >>> [t.accept("edge-1", "s", n) for n in (0, 1, 1, 3, 2)]
    [True, True, False, True, False]
    >>> t.counts()
    {'accepted': 3, 'duplicates': 1, 'out_of_order': 1, 'missing': 1, 'sessions': 1}
"""

from __future__ import annotations

__all__ = ["SequenceTracker"]


class SequenceTracker:
    """Per-key ``(session, last seq)`` with counters of what was dropped or skipped."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[str, int]] = {}
        self.accepted = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.missing = 0
        self.sessions = 0

    def accept(self, key: str, session: str, seq: int) -> bool:
        """Whether a message should be processed (``False``: drop it; counted)."""
        last = self._last.get(key)
        if last is None or last[0] != session:
            self.sessions += 1
        elif seq == last[1]:
            self.duplicates += 1
            return False
        elif seq < last[1]:
            self.out_of_order += 1
            return False
        else:
            self.missing += seq - last[1] - 1
        self._last[key] = (session, seq)
        self.accepted += 1
        return True

    def last_seq(self, key: str) -> int | None:
        """The last accepted ``seq`` of a key, or ``None``."""
        last = self._last.get(key)
        return None if last is None else last[1]

    def counts(self) -> dict[str, int]:
        """Counters: accepted, duplicates, out_of_order, missing, sessions."""
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "missing": self.missing,
            "sessions": self.sessions,
        }
