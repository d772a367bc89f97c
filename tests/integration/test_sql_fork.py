"""A process that forks while its threads use SQLite: the children do not hang.

Celery's prefork pool forks a new pool process whenever one ends, from a worker whose threads
(the lease heartbeat, the ack writer, the beats) are in SQLite at any time. A child forked while
one of them was inside SQLite inherited SQLite's mutexes locked, and hung at its first SQLite
call: the jobs sent to it stayed ``processing`` (three CI runs failed so, in the contract tests
that follow the ones that kill a pool process).
"""

from __future__ import annotations

import faulthandler
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from unified_jobs.adapters.sql import fork_guard
from unified_jobs.adapters.sql.engine import get_engine

#: Forks in the test; without the guard 1 to 4 of 300 hung (plain sqlite3, this machine).
FORKS = 300
#: A child that has not done its SQLite work after this long is hung (it exits with a dump).
HUNG_AFTER_SEC = 8.0

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX only")


def test_children_forked_beside_threads_inside_sqlite_do_not_hang(tmp_path: Path) -> None:
    engine = get_engine(f"sqlite:///{tmp_path / 'fork.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            while not stop.is_set():
                with engine.begin() as conn:
                    conn.execute(text("INSERT INTO t VALUES (1)"))
                with engine.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM t")).scalar()
        except BaseException as exc:  # the test fails on it below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    hung: list[str] = []
    try:
        for n in range(FORKS):
            dump = tmp_path / f"child-{n}.txt"
            pid = os.fork()
            if pid == 0:  # the child: its own connection, as a new pool process opens one
                code = 1
                try:
                    with dump.open("w") as out:
                        faulthandler.dump_traceback_later(HUNG_AFTER_SEC, exit=True, file=out)
                        with engine.connect() as conn:
                            conn.execute(text("SELECT count(*) FROM t")).scalar()
                        faulthandler.cancel_dump_traceback_later()
                    code = 0
                finally:
                    os._exit(code)
            if _exit_status(pid, HUNG_AFTER_SEC + 4) != 0:
                hung.append(f"child {n}: {dump.read_text()[-800:] or 'no dump: killed'}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors
    assert not hung, f"{len(hung)} of {FORKS} children hung at their first SQLite call:\n" + "\n".join(hung)


def _exit_status(pid: int, timeout: float) -> int:
    """The child's exit status; a child still running after ``timeout`` s is killed (-9)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return -9


def test_a_fork_waits_for_the_threads_inside_sqlite_and_new_ones_wait_for_the_fork() -> None:
    guard = fork_guard.ForkGuard()
    inside, out = threading.Event(), threading.Event()
    order: list[str] = []

    def worker() -> None:
        with guard.held():
            inside.set()
            time.sleep(0.3)
            order.append("left")
        out.set()

    thread = threading.Thread(target=worker)
    thread.start()
    assert inside.wait(5)
    guard.before_fork()
    order.append("forking")

    def late_entry() -> None:
        ident = guard.enter()
        order.append("entered")
        guard.leave(ident)

    late = threading.Thread(target=late_entry)
    late.start()
    time.sleep(0.2)
    assert "entered" not in order, "a thread entered SQLite during the fork"
    guard.after_in_parent()
    late.join(5)
    thread.join(5)
    assert order == ["left", "forking", "entered"]
    with guard.held():  # the forking thread's own hold does not hold its fork back
        guard.before_fork()
        guard.after_in_parent()
