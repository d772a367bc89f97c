"""The SQL queue under real ``celery worker`` subprocesses, on PostgreSQL and SQLite."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import pytest
from sqlalchemy import insert

from tests.integration.conftest_sql import SqlQueue, sqlq_fixture, wait_for  # noqa: F401  (fixture)


def _enqueue(producer: object, task: str, jobs: list[str], **options: object) -> None:
    for job in jobs:
        producer.send_task(task, args=(job,), **options)  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
def test_sigkill_of_the_whole_worker_loses_no_job(sqlq: SqlQueue) -> None:
    sqlq.lease_sec = 2.0
    jobs = [f"crash{i}" for i in range(20)]
    producer = sqlq.producer()
    for job in jobs:
        producer.send_task("sqlt.record", args=(job, 2.0))

    first = sqlq.start_worker("first", concurrency=2)

    def mid_job() -> bool:  # some done, and one started but not done: the kill interrupts it
        done = {job for job, _, _ in sqlq.events("done")}
        return len(done) >= 4 and any(job not in done for job, _, _ in sqlq.events("start"))

    wait_for(mid_job, 40, "4 jobs done by the first worker and another one running")
    first.kill()  # main process and pool children, mid-job
    killed_at = time.time()
    done_before = sqlq.done_counts()
    started_before = Counter(job for job, _, _ in sqlq.events("start"))
    assert len(done_before) < 20

    sqlq.start_worker("second", concurrency=4)
    wait_for(lambda: set(sqlq.done_counts()) == set(jobs), 60, "all 20 jobs done after the restart")

    counts = sqlq.done_counts()
    assert set(counts) == set(jobs), "a job was lost"
    # Exactly once, except in the at-least-once window: a job that logged "done" in the last
    # instant before the kill, whose ack was not yet written, legitimately runs again.
    first_done: dict[str, float] = {}
    for job, _, t in sqlq.events("done"):
        first_done.setdefault(job, t)
    twice = {job for job, n in counts.items() if n > 1}
    assert all(killed_at - first_done[job] < 0.5 for job in twice), f"duplicates: {twice}"
    assert len(twice) <= 2
    # The jobs that were running at the kill ran again, and the table agrees.
    interrupted = {job for job in started_before if job not in done_before}
    assert interrupted, "the kill did not interrupt a running job; the test proved nothing"
    # A job logs "done" before its ack is written (by the ack writer, a moment later).
    wait_for(lambda: sqlq.status_counts() == {"completed": 20}, 10, "every row completed")
    rows = sqlq.rows()
    assert Counter(r.status for r in rows) == {"completed": 20}
    attempts = {r.task_id: r.attempts for r in rows}
    assert len(attempts) == 20
    assert sum(1 for r in rows if r.attempts >= 2) >= len(interrupted)


@pytest.mark.timeout(90)
def test_a_job_three_times_the_lease_runs_once_with_a_second_worker(sqlq: SqlQueue) -> None:
    sqlq.lease_sec = 2.0
    a = sqlq.start_worker("a", concurrency=1, wait=False)
    b = sqlq.start_worker("b", concurrency=1, wait=False)
    sqlq.wait_ready(a)
    sqlq.wait_ready(b)
    sqlq.producer().send_task("sqlt.record", args=("long", 6.0))
    wait_for(lambda: sqlq.done_counts()["long"] >= 1, 40, "the long job to finish")
    # Let any wrongful second claim surface: a reaper runs every lease/3 in both workers.
    time.sleep(sqlq.lease_sec * 1.5)
    starts = [e for e in sqlq.events("start") if e[0] == "long"]
    assert len(starts) == 1, f"the long job started {len(starts)} times: {starts}"
    assert sqlq.done_counts()["long"] == 1
    (row,) = sqlq.rows()
    assert (row.status, row.attempts) == ("completed", 1)


@pytest.mark.timeout(150)
def test_three_workers_drain_5000_jobs_without_duplicates_or_losses(sqlq: SqlQueue) -> None:
    workers = [sqlq.start_worker(f"w{i}", concurrency=2, wait=False) for i in range(3)]
    for w in workers:
        sqlq.wait_ready(w)
    jobs = [f"n{i}" for i in range(5000)]
    producer = sqlq.producer()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda chunk: _enqueue(producer, "sqlt.noop", chunk), [jobs[i::4] for i in range(4)]))
    wait_for(lambda: len(sqlq.events("done")) >= 5000, 90, "5000 jobs done", interval=0.2)
    time.sleep(0.5)  # a duplicate would show up now
    counts = sqlq.done_counts()
    missing = set(jobs) - set(counts)
    duplicates = {job: n for job, n in counts.items() if n > 1}
    assert not missing, f"{len(missing)} missing"
    assert not duplicates, f"{len(duplicates)} duplicated"
    assert len({pid for _, pid, _ in sqlq.events("done")}) >= 3, "the work was not shared"
    assert sqlq.status_counts() == {"completed": 5000}


@pytest.mark.timeout(60)
def test_a_delayed_job_waits_in_the_table_not_in_the_worker(sqlq: SqlQueue) -> None:
    sqlq.start_worker("w", concurrency=1)
    producer = sqlq.producer()
    sent = time.time()
    later = producer.send_task("sqlt.record", args=("later",), countdown=3)
    producer.send_task("sqlt.record", args=("now",))
    wait_for(lambda: sqlq.done_counts()["now"], 10, "the undelayed job")
    time.sleep(max(0.0, sent + 1.5 - time.time()))
    # Mid-way: still a queued, never-claimed row, not a message held in the worker's memory.
    (row,) = [r for r in sqlq.rows() if r.task_id == later.id]
    assert (row.status, row.attempts) == ("queued", 0)
    assert not [e for e in sqlq.events("start") if e[0] == "later"], "the delayed job started early"
    wait_for(lambda: sqlq.done_counts()["later"], 10, "the delayed job")
    (start,) = [t for job, _, t in sqlq.events("start") if job == "later"]
    assert start >= sent + 3 - 0.05, f"started {start - sent:.3f} s after sending, before its countdown"
    assert start <= sent + 3 + 1.5, f"started {start - sent:.3f} s after sending: far too late"


@pytest.mark.timeout(60)
def test_higher_priority_starts_first_on_a_single_slot_worker(sqlq: SqlQueue) -> None:
    producer = sqlq.producer()
    order = [("low1", 0), ("low2", 0), ("mid", 5), ("high1", 9), ("low3", 0), ("high2", 9)]
    for job, priority in order:
        producer.send_task("sqlt.record", args=(job,), priority=priority)
    sqlq.start_worker("single", "--prefetch-multiplier", "1", concurrency=1)
    wait_for(lambda: len(sqlq.events("done")) >= len(order), 30, "all jobs done")
    started = [job for job, _, _ in sorted(sqlq.events("start"), key=lambda e: e[2])]
    assert started == ["high1", "high2", "mid", "low1", "low2", "low3"]


@pytest.mark.timeout(60)
def test_bad_rows_are_marked_failed_and_the_worker_keeps_consuming(sqlq: SqlQueue) -> None:
    sqlq.ensure_schema()
    jobs = sqlq.tables.jobs
    stamp = datetime.now(timezone.utc)
    bad = [
        "{not json",
        '["a JSON list, not a kombu message"]',
        '{"body": "!!!not base64!!!", "properties": {"body_encoding": "base64"}, '
        '"content-type": "application/json", "headers": {}}',
    ]
    with sqlq.engine.begin() as conn:
        for payload in bad:
            conn.execute(
                insert(jobs).values(
                    queue="celery",
                    payload=payload,
                    status="queued",
                    priority=0,
                    run_at=stamp,
                    attempts=0,
                    created_at=stamp,
                    updated_at=stamp,
                )
            )
    producer = sqlq.producer()
    producer.send_task("sqlt.no_such_task", args=("ghost",))
    producer.send_task("sqlt.record", args=("good",))
    worker = sqlq.start_worker("w", concurrency=1)
    wait_for(lambda: sqlq.done_counts()["good"], 20, "the good job after the bad rows")

    def settled() -> bool:
        return all(r.status in ("failed", "completed") for r in sqlq.rows())

    wait_for(settled, 10, "every row settled")
    rows = sqlq.rows()
    assert len(rows) == 5, "a row was deleted"
    by_status = Counter(r.status for r in rows)
    assert by_status == {"failed": 4, "completed": 1}
    for row in rows[:3]:
        assert row.last_error.startswith("undecodable payload"), row.last_error
    (ghost,) = [r for r in rows if r.task_name == "sqlt.no_such_task"]
    assert ghost.status == "failed" and "rejected" in ghost.last_error
    # Still consuming.
    producer.send_task("sqlt.record", args=("after",))
    wait_for(lambda: sqlq.done_counts()["after"], 10, "a job after the bad rows")
    assert worker.proc.poll() is None


@pytest.mark.timeout(60)
def test_a_killed_pool_process_gets_its_job_requeued_at_once(sqlq: SqlQueue) -> None:
    # task_reject_on_worker_lost: the main process requeues; no lease expiry needed.
    sqlq.lease_sec = 30.0
    sqlq.start_worker("w", concurrency=1)
    sqlq.producer().send_task("sqlt.record", args=("victim", 3.0))
    (_, pid, _) = wait_for(lambda: sqlq.events("start"), 20, "the job to start")[0]
    os.kill(pid, signal.SIGKILL)
    killed = time.time()
    wait_for(lambda: sqlq.done_counts()["victim"], 25, "the job to run again")
    starts = [e for e in sqlq.events("start") if e[0] == "victim"]
    assert len(starts) == 2
    # Celery notices the lost process after worker_lost_wait (2 s in this app), then requeues.
    assert starts[1][2] - killed < 10, "it waited for the 30 s lease instead of being requeued"
    # The job logs "done" before its ack is written (by the ack writer, batched): wait for it.
    wait_for(lambda: sqlq.rows()[0].status == "completed", 10, "the ack to be written")
    (row,) = sqlq.rows()
    assert (row.status, row.attempts) == ("completed", 2)
