"""The safety timer: a thread that runs the runtime's safety check on its own period.

The control tick may be a minute long, and a tick may take long (a slow policy); the
watchdog must not wait for it. :class:`SafetyTimer` calls ``check()`` every
``period_s`` (≤ 50 ms by default) from a daemon thread, and at once when :meth:`wake` is
called (a stop request). The check itself (stale packs, stale site, stop requested → safe
frames) is :meth:`pulsebms.edge_runtime.runtime.EdgeRuntime.check_safety`; this module only
schedules it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

__all__ = ["SafetyTimer"]

logger = logging.getLogger("pulsebms.edge_runtime")


class SafetyTimer:
    """Call ``check`` every ``period_s`` on a daemon thread until :meth:`stop`.

    Args:
        check: The safety check; exceptions are logged, never stop the timer.
        period_s: Period [s].

    Raises:
        ValueError: If ``period_s`` is not > 0.

    Example:
        >>> calls = []
        >>> with SafetyTimer(lambda: calls.append(1), 0.01):
        ...     threading.Event().wait(0.05)
        False
        >>> len(calls) >= 2
        True
    """

    def __init__(self, check: Callable[[], object], period_s: float) -> None:
        if not period_s > 0:
            raise ValueError(f"safety period must be > 0, got {period_s}")
        self._check = check
        self.period_s = float(period_s)
        self._wake = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pulsebms-safety", daemon=True)

    def _loop(self) -> None:
        while not self._done.is_set():
            self._wake.wait(self.period_s)
            self._wake.clear()
            try:
                self._check()
            except Exception:  # the timer must survive a failing check
                logger.exception("safety check failed")

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def wake(self) -> None:
        """Run the check now (safe to call from a signal handler: no locks)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread (one last check runs) and wait for it."""
        self._done.set()
        self._wake.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)

    def __enter__(self) -> SafetyTimer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
