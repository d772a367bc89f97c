"""The shared context every worker gets as ``self.ctx``."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class ShopContext:
    """Stands in for what a real app shares with its jobs (a DB pool, a mailer, ...)."""

    tax_rate: float = 0.2
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    done: Counter[str] = field(default_factory=Counter)
    revenue_cents: int = 0

    def record(self, kind: str, cents: int = 0) -> None:
        with self._lock:
            self.done[kind] += 1
            self.revenue_cents += cents

    @property
    def total_done(self) -> int:
        with self._lock:
            return sum(self.done.values())
