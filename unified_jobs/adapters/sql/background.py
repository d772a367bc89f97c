"""The consumer's background threads: the lease heartbeat and the ack writer."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unified_jobs.adapters.sql.channel import Channel

__all__ = ["AckWriter", "Heartbeat"]

logger = logging.getLogger(__name__)

#: Seconds between heartbeats while the database does not answer.
RETRY_SEC = 1.0
#: Seconds the ack writer waits after an ack before it writes: the acks of jobs that end
#: meanwhile go in the same transaction. A busy worker wrote about one ack per transaction
#: without it; with it, drain on SQLite and Postgres is about a quarter faster (a job's
#: outcome is written up to 5 ms later; its prefetch slot is free at once, as before).
ACK_GATHER_SEC = 0.005


class Heartbeat(threading.Thread):
    def __init__(self, channel: Channel) -> None:
        super().__init__(name="unified_jobs-sql-heartbeat", daemon=True)
        self._channel = channel
        self._interval = channel.options.effective_heartbeat_sec
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        failed = False
        while True:
            try:
                self._channel.heartbeat()
            except Exception as exc:
                # Once per outage with its traceback; then every second until it answers, so
                # that the leases are renewed soon after it does (reapers wait one lease).
                if not failed:
                    logger.warning("SQL queue heartbeat failed; retrying every %g s", RETRY_SEC, exc_info=exc)
                else:
                    logger.debug("SQL queue heartbeat failed again: %s", exc)
                failed = True
            else:
                failed = False
            if self._stop_event.wait(min(self._interval, RETRY_SEC) if failed else self._interval):
                return


class AckWriter(threading.Thread):
    def __init__(self, channel: Channel) -> None:
        super().__init__(name="unified_jobs-sql-acks", daemon=True)
        self._channel = channel
        self._wake = threading.Event()
        self._stop_event = threading.Event()

    def poke(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop_event.set()
        self._wake.set()
        if self is not threading.current_thread():
            self.join(10)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self._wake.wait(1.0)
            self._stop_event.wait(ACK_GATHER_SEC)
            self._wake.clear()
            try:
                self._channel.flush_acks()
            except Exception:
                logger.warning("SQL queue ack writer failed; retrying", exc_info=True)
