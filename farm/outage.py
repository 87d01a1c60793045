"""Riding out a database outage: a step that finds the database unreachable is tried again with backoff.

Used where giving up at once would cost more than waiting: a worker recording a result it computed (losing it
would re-run the job and charge it a worker loss that never happened), and ``--wait`` / ``sweep status --watch``
(exiting while the sweep goes on). Standard library only, besides the error tree.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from farm.errors import StoreUnavailable

T = TypeVar("T")

#: The longest pause between two tries: a database that comes back is noticed within this.
MAX_DELAY_S = 5.0


class Patience:
    """Calls steps through database outages, each outage for at most ``retry_s``.

    A step that raises :class:`StoreUnavailable` is called again: at once (a pooled connection that a restart
    closed is replaced by then), then after 0.5 s, doubling up to :data:`MAX_DELAY_S`. The outage's clock starts at
    its first failure and stops at the next success; once it has run ``retry_s``, the step's error propagates,
    saying for how long the database stayed away. A later call after that tries once: the outage goes on.

    Args:
        retry_s: how long one outage is ridden out.
        setting: the environment variable that sets ``retry_s``, named in the final error.
        on_wait: called once per outage, at its first failure, with the error and the seconds left.
        on_back: called once per outage, when a step succeeds again.
        sleep: the pause; clock: monotonic seconds (tests pass a fake clock's).
    """

    def __init__(
        self,
        retry_s: float,
        *,
        setting: str,
        on_wait: Callable[[StoreUnavailable, float], None] | None = None,
        on_back: Callable[[], None] | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ):
        self.retry_s, self.setting = retry_s, setting
        self.on_wait, self.on_back = on_wait, on_back
        # Looked up at each call (not bound here), so that a test patching time.sleep reaches them.
        self._sleep = sleep or (lambda s: time.sleep(s))
        self._clock = clock or (lambda: time.monotonic())
        self.deadline: float | None = None  # set while an outage lasts

    def call(self, step: Callable[[], T]) -> T:
        """``step()``, retried while it raises StoreUnavailable and the outage is younger than ``retry_s``.

        Raises:
            StoreUnavailable: the database stayed unreachable for ``retry_s`` (the message says so).
        """
        delay = 0.0
        while True:
            try:
                value = step()
            except StoreUnavailable as e:
                now = self._clock()
                if self.deadline is None:
                    self.deadline = now + self.retry_s
                    if self.on_wait is not None:
                        self.on_wait(e, self.retry_s)
                left = self.deadline - now
                if left <= 0:
                    raise StoreUnavailable(f"{e} (for {self.retry_s:g} s, {self.setting}); giving up") from e
                self._sleep(min(delay, left))
                delay = min(max(0.5, delay * 2), MAX_DELAY_S)
                continue
            if self.deadline is not None:
                self.deadline = None
                if self.on_back is not None:
                    self.on_back()
            return value
