"""A Redis of the test's own (``tests.procs.PrivateRedis``, append-only file, ``appendfsync
always``), stopped and started again while two real ``unified-jobs start --worker`` processes
drain its queue: what is lost, what runs twice, and how long the workers take to resume. Its
row goes to the fault table (``fault_row``).

Nothing is lost: a job that reached a pool process while Redis was down (its start could not
be recorded) goes back to its queue rather than failing unrecorded (2 of 300 were lost so in
about 1 run in 8 before). A job whose ack could not be written while Redis was down runs again
after ``visibility_timeout``: at most the jobs the workers held. See
docs/explanation/guarantees.md, "Queue server restarts".
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.contract.contract_app import Sleep, create_app
from tests.faults.restarts import after_restart
from tests.procs import PrivateRedis, WorkerPool, read_records, wait_until

pytestmark = pytest.mark.timeout(180)

APP = "tests.contract.contract_app:app_from_env"
#: A message a worker held when Redis went away comes back after this (seconds).
VISIBILITY = 10
#: The most jobs a worker holds (running and prefetched): concurrency 2 x Celery's prefetch 4.
HELD = 8


def _where(url: str, job_ids: list[str]) -> str:
    """Where each job's message is in Redis now (its queue, the unacked hash, nowhere)."""
    import redis as redis_py

    client = redis_py.Redis.from_url(url)
    lines = []
    queued = b"".join(client.lrange("default", 0, -1))
    unacked = b"".join(v for v in client.hgetall("unacked").values())
    for job_id in job_ids:
        places = [name for name, blob in (("queue", queued), ("unacked", unacked)) if job_id.encode() in blob]
        lines.append(f"{job_id}: {', '.join(places) or 'nowhere'}; keys {sorted(client.keys('*'))[:20]}")
    return "\n".join(lines)


def test_a_restart_mid_drain_loses_nothing(tmp_path: Path, fault_row: Callable[..., None]) -> None:
    redis = PrivateRedis(tmp_path, persist=True)
    record = tmp_path / "record.jsonl"
    record.touch()
    config = {
        "workers": {"mode": "BackgroundQueue"},
        "queue": {"kind": "Redis", "uri": redis.url, "visibility_timeout": VISIBILITY},
    }
    env = {"UJ_CONTRACT_RECORD": str(record), "UJ_CONTRACT_CONFIG": json.dumps(config)}
    jobs = create_app(config, str(record))
    pool = WorkerPool(APP, tmp_path)
    try:
        ids = [Sleep.perform_later({"n": n, "seconds": 0.02}).id for n in range(300)]
        for name in ("a", "b"):
            pool(env, "--concurrency", "2", "--", "--without-mingle", "--without-gossip", name=name)

        def events(what: str) -> list[dict[str, object]]:
            return [r for r in read_records(record) if r["worker"] == what]

        assert wait_until(lambda: len(events("sleep_end")) >= 60, 60), pool.started[0].output()[-3000:]
        redis.stop()
        time.sleep(2.0)
        redis.start()
        back_at = time.time()
        outcome = after_restart(record, ids, back_at, VISIBILITY * 6)
        lost, twice = len(outcome.lost), len(outcome.twice)
        recovery = outcome.recovery
        fault_row("Redis restart mid-drain (down 2 s)", "Redis", lost, twice, recovery)
        details = "\n".join(w.output()[-3000:] for w in pool.started)
        details += "\n" + _where(redis.url, outcome.lost) + f"\nrun twice: {outcome.twice}"
        assert lost == 0, details
        assert twice <= HELD * len(pool.started), details
    finally:
        pool.stop_all()
        jobs.shutdown()
        redis.stop()


def test_a_message_taken_just_before_redis_went_down_is_held_unacked_once_it_is_back(tmp_path: Path) -> None:
    """kombu's window: BRPOP took the message off its list, and the write of its unacked entry
    (a second command) meets Redis down. kombu gave up there, and the message was in no list
    and in no unacked hash: lost. The entry's write is now tried again until Redis answers."""
    import threading

    import redis as redis_py
    from kombu import Connection

    from unified_jobs.adapters.celery.kinds import redis_transport

    server = PrivateRedis(tmp_path, persist=True)
    stopped, back = threading.Event(), threading.Event()
    timers: list[threading.Timer] = []
    kombus = redis_transport.kombu_redis.QoS.append

    def restart() -> None:
        server.start()
        back.set()

    def append_after_redis_went_down(qos: object, message: object, delivery_tag: object) -> None:
        if not stopped.is_set():  # the first try: Redis goes down in the window, for 1 s
            stopped.set()
            server.stop()
            timers.append(threading.Timer(1.0, restart))
            timers[0].start()
        kombus(qos, message, delivery_tag)  # type: ignore[arg-type]

    transport = "unified_jobs.adapters.celery.kinds.redis_transport:Transport"
    try:
        with Connection(server.url, transport=transport) as conn:
            queue = conn.SimpleQueue("window")
            queue.put({"job": 1})
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(redis_transport.kombu_redis.QoS, "append", append_after_redis_went_down)
                message = queue.get(timeout=20)
            assert stopped.is_set() and back.is_set(), "delivered before Redis came back"
            assert message.payload == {"job": 1}
            client = redis_py.Redis.from_url(server.url)
            assert client.hlen("unacked") == 1, "held nowhere: a crash of the worker now would lose it"
            assert client.llen("window") == 0
            message.ack()
            assert client.hlen("unacked") == 0
            client.close()
            queue.close()
    finally:
        for timer in timers:  # a failure before the restart: no server left running after the test
            timer.cancel()
            timer.join()
        server.stop()
