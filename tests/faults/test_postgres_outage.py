"""A PostgreSQL of the test's own (``tests.procs.PrivatePostgres``), stopped and started again
under real worker processes draining the SQL queue: no job is lost, none runs twice, and the
workers resume by themselves. Each test records its row of the fault table (scenario, lost,
run twice, recovery time) with ``fault_row``; ``make test`` prints the table at the end.

- a restart mid-drain (the server down about 2 s): settles that failed while it was down are
  written after the reconnect, and the consumer is not torn down (which handed running jobs
  back to the queue);
- an outage longer than the lease: reapers wait one lease period after the reconnect before
  requeueing an expired lease, and the owners renew theirs in that time;
- a crash (``immediate`` stop, recovery at the start) mid-drain.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.integration.conftest_sql import SqlQueue, wait_for
from tests.procs import PrivatePostgres, postgres_bindir_or_reason

pytestmark = [pytest.mark.timeout(180), pytest.mark.postgres]


@pytest.fixture
def private_pg() -> Iterator[PrivatePostgres]:
    _, reason = postgres_bindir_or_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def queue(private_pg: PrivatePostgres, tmp_path: Path) -> Iterator[SqlQueue]:
    sqlq = SqlQueue("postgres", private_pg.url, tmp_path)
    try:
        yield sqlq
    finally:
        for worker in sqlq.workers:
            worker.kill()


def _enqueue(sqlq: SqlQueue, jobs: list[str], seconds: float) -> None:
    sqlq.ensure_schema()
    producer = sqlq.producer()
    for job in jobs:
        producer.send_task("sqlt.record", args=(job, seconds))


def _run_twice(sqlq: SqlQueue) -> set[str]:
    """The jobs started more than once."""
    starts = Counter(job for job, _, _ in sqlq.events("start"))
    return {job for job, n in starts.items() if n > 1}


def _outcome(sqlq: SqlQueue, jobs: list[str]) -> tuple[int, int]:
    """(lost, run twice): jobs never done, and jobs started more than once."""
    done = sqlq.done_counts()
    return sum(1 for j in jobs if not done[j]), len(_run_twice(sqlq) & set(jobs))


def _recovery(sqlq: SqlQueue, back_at: float) -> float:
    """Seconds from the server's return to the first job started after it (claimed after it:
    the jobs of 20 ms prefetched before the outage all started within it)."""
    after = [t for _, _, t in sqlq.events("start") if t >= back_at]
    return min(after) - back_at if after else float("nan")


def _details(sqlq: SqlQueue) -> str:
    return "\n".join(f"--- {w.name}\n{w.log.read_text(errors='replace')[-3000:]}" for w in sqlq.workers)


def test_a_restart_mid_drain_loses_nothing_and_runs_nothing_twice(
    private_pg: PrivatePostgres, queue: SqlQueue, fault_row: Callable[..., None]
) -> None:
    queue.lease_sec = 10.0
    jobs = [f"blip{i}" for i in range(300)]
    # 50 ms each: about 4 s of work for the 4 processes, so the restart comes mid-drain (with
    # 20 ms jobs the drain had sometimes ended before it: the test then tested nothing).
    _enqueue(queue, jobs, 0.05)
    queue.start_worker("a", concurrency=2)
    queue.start_worker("b", concurrency=2)
    wait_for(lambda: len(queue.done_counts()) >= 30, 60, "30 jobs done before the restart")
    private_pg.stop("fast")
    done_at_stop = len(queue.done_counts())
    assert done_at_stop < len(jobs) - 20, f"{done_at_stop} of {len(jobs)} done at the stop: not mid-drain"
    time.sleep(2.0)
    private_pg.start()
    back_at = time.time()
    wait_for(lambda: set(queue.done_counts()) == set(jobs), 90, "every job done after the restart")
    time.sleep(1.0)  # a wrongful second run would show up now
    lost, twice = _outcome(queue, jobs)
    fault_row("Postgres restart mid-drain (down 2 s)", "Postgres", lost, twice, _recovery(queue, back_at))
    assert (lost, twice) == (0, 0), _details(queue)
    assert queue.status_counts() == {"completed": 300}


def test_an_outage_longer_than_the_lease_runs_no_long_job_twice(
    private_pg: PrivatePostgres, queue: SqlQueue, fault_row: Callable[..., None]
) -> None:
    queue.lease_sec = 3.0
    jobs = [f"long{i}" for i in range(4)]
    queue.start_worker("a", concurrency=2)
    queue.start_worker("b", concurrency=2)
    _enqueue(queue, jobs, 12.0)
    wait_for(lambda: len(queue.events("start")) == 4, 30, "the 4 long jobs running")
    private_pg.stop("fast")
    time.sleep(8.0)  # more than twice the lease: every lease has expired when it is back
    private_pg.start()
    wait_for(lambda: set(queue.done_counts()) == set(jobs), 60, "the 4 long jobs done")
    time.sleep(queue.lease_sec * 2)  # reapers run every lease/3: a wrongful requeue shows now
    lost, twice = _outcome(queue, jobs)
    scenario = "Postgres down 8 s, lease 3 s, jobs of 12 s"
    fault_row(scenario, "Postgres", lost, twice, None)  # nothing new to start: no recovery time
    assert (lost, twice) == (0, 0), _details(queue)
    assert queue.status_counts() == {"completed": 4}


def test_a_crash_mid_drain_loses_nothing(
    private_pg: PrivatePostgres, queue: SqlQueue, fault_row: Callable[..., None]
) -> None:
    queue.lease_sec = 10.0
    jobs = [f"crash{i}" for i in range(200)]
    _enqueue(queue, jobs, 0.02)
    queue.start_worker("a", concurrency=2)
    wait_for(lambda: len(queue.done_counts()) >= 40, 60, "40 jobs done before the crash")
    crash_at = time.time()
    private_pg.stop("immediate")
    done_at_crash = len(queue.done_counts())
    assert done_at_crash < len(jobs) - 20, f"{done_at_crash} of {len(jobs)} done at the crash: not mid-drain"
    time.sleep(1.0)
    private_pg.start()
    back_at = time.time()
    wait_for(lambda: set(queue.done_counts()) == set(jobs), 90, "every job done after the crash")
    time.sleep(1.0)
    lost, twice = _outcome(queue, jobs)
    fault_row("Postgres crash mid-drain (immediate stop)", "Postgres", lost, twice, _recovery(queue, back_at))
    assert lost == 0, _details(queue)
    # With async_commit (the default), a crash may forget the acks and claims committed in
    # its last moments (PostgreSQL flushes them within 3 x wal_writer_delay, 0.6 s): only a
    # job first done that close to the crash may run again.
    first_done: dict[str, float] = {}
    for job, _, t in queue.events("done"):
        first_done.setdefault(job, t)
    late = {job for job in _run_twice(queue) if job in first_done and crash_at - first_done[job] > 1.0}
    assert not late, f"run twice though done well before the crash: {late}\n{_details(queue)}"


def test_an_outcome_written_while_the_server_is_down_lands_after_it_returns(
    private_pg: PrivatePostgres,
) -> None:
    """The lease engine itself, without a worker: an ack, a failure and a requeue made while the
    server is down are kept (their leases renewed meanwhile) and written once it answers; after
    the outage, reaping waits one lease, then requeues only a dead owner's expired lease."""
    from sqlalchemy import select
    from sqlalchemy.exc import OperationalError

    from tests.integration.conftest_sql import two_owners
    from unified_jobs.adapters.sql.engine import get_engine

    engine = get_engine(private_pg.url)
    leases, other, tables = two_owners(engine, "uj_outage_", 4)
    rows = leases.claim(["q"], 3)
    assert len(rows) == 3
    done, failed, back = (leases.hold(r) for r in rows)
    (row,) = other.claim(["q"], 1)
    other.hold(row)
    other.forget_all()  # its owner dies: nobody renews j3's lease
    private_pg.stop("fast")
    leases.settle(done, "ack")
    leases.note_failure(failed, "Boom: no")
    leases.settle(failed, "reject")
    leases.settle(back, "requeue")
    assert leases.failing and leases.holds_claims()
    with pytest.raises(OperationalError):
        leases.heartbeat()
    private_pg.start()
    jobs = tables.jobs

    def statuses() -> dict[str, str]:
        with engine.begin() as conn:
            return {r.task_id: r.status for r in conn.execute(select(jobs.c.task_id, jobs.c.status))}

    time.sleep(1.1)  # every lease has expired now
    assert leases.heartbeat() == 0, "reaped at once after the outage: live owners had no time to renew"
    assert not leases.failing and not leases.holds_claims()
    assert statuses() == {"j0": "completed", "j1": "failed", "j2": "queued", "j3": "processing"}
    time.sleep(1.1)
    assert leases.heartbeat() == 1  # one lease after the reconnect: the dead owner's job
    assert statuses()["j3"] == "queued"
    engine.dispose()
