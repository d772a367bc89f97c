from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from pydantic import BaseModel

import unified_jobs
from unified_jobs import Config, Jobs, Worker
from unified_jobs.errors import InvalidOptionError, ShutdownError


class A(BaseModel):
    x: int


def app(mode: str, **workers: object) -> Jobs:
    return Jobs(Config.from_dict({"workers": {"mode": mode, **workers}}))


def test_public_names() -> None:
    assert set(unified_jobs.__all__) >= {"Jobs", "Worker", "JobHandle"}
    for name in unified_jobs.__all__:
        assert getattr(unified_jobs, name) is not None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"wait": timedelta(seconds=1), "run_at": datetime.now(timezone.utc)}, "not both"),
        ({"wait": timedelta(seconds=-1)}, "must not be negative"),
        ({"wait": 5}, "takes a datetime.timedelta"),
        ({"run_at": datetime(2030, 1, 1)}, "must be timezone-aware"),
        ({"priority": 10}, "from 0 to 9"),
        ({"priority": True}, "from 0 to 9"),
        ({"queue": ""}, "non-empty string"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(options: dict[str, object], message: str) -> None:
    ran: list[int] = []

    class Probe(Worker[A]):
        def perform(self, args: A) -> None:
            ran.append(args.x)

    jobs = app("ForegroundBlocking")
    jobs.register(Probe)
    with pytest.raises(InvalidOptionError, match=message):
        Probe.perform_later({"x": 1}, **options)  # type: ignore[arg-type]
    assert ran == []


def test_unknown_options_are_a_type_error() -> None:
    class Probe(Worker[A]):
        def perform(self, args: A) -> None: ...

    app("ForegroundBlocking").register(Probe)
    with pytest.raises(TypeError):
        Probe.perform_later({"x": 1}, delay=3)  # type: ignore[call-arg]


def test_args_that_do_not_survive_json_are_caught_at_enqueue() -> None:
    class Tricky(BaseModel):
        value: float

    class Probe(Worker[Tricky]):
        def perform(self, args: Tricky) -> None: ...

    jobs = app("BackgroundAsync")
    jobs.register(Probe)
    # inf serializes to JSON null, which does not validate back as a float: a queue would fail it later.
    with pytest.raises(ValueError, match="float"):
        Probe.perform_later({"value": float("inf")})
    jobs.shutdown()


# -- ForegroundBlocking ------------------------------------------------------------------------


def test_inline_runs_async_perform_from_sync_code_inside_a_running_loop() -> None:
    ran: list[int] = []

    class AsyncProbe(Worker[A]):
        async def perform(self, args: A) -> None:
            await asyncio.sleep(0)
            ran.append(args.x)

    jobs = app("ForegroundBlocking")
    jobs.register(AsyncProbe)

    async def main() -> None:
        AsyncProbe.perform_later({"x": 1})  # sync call from within a loop
        assert ran == [1]
        await AsyncProbe.aperform_later({"x": 2})
        assert ran == [1, 2]

    asyncio.run(main())


def test_inline_aperform_later_runs_in_the_callers_loop_and_propagates() -> None:
    class LoopProbe(Worker[A]):
        async def perform(self, args: A) -> None:
            assert self.ctx["loop"] is asyncio.get_running_loop()
            raise KeyError(args.x)

    async def main() -> None:
        jobs = Jobs(
            Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}),
            context={"loop": asyncio.get_running_loop()},
        )
        jobs.register(LoopProbe)
        with pytest.raises(KeyError):
            await LoopProbe.aperform_later({"x": 5})

    asyncio.run(main())


# -- BackgroundAsync ---------------------------------------------------------------------------


def test_pool_runs_higher_priority_first_and_honours_concurrency() -> None:
    order: list[int] = []
    gate = threading.Event()
    gate_started = threading.Event()
    active = 0
    peak = 0
    lock = threading.Lock()

    class Probe(Worker[A]):
        def perform(self, args: A) -> None:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            if args.x == -1:
                gate_started.set()
                gate.wait(5)
            with lock:
                order.append(args.x)
                active -= 1

    jobs = app("BackgroundAsync", concurrency=1)
    jobs.register(Probe)
    Probe.perform_later({"x": -1})  # occupies the single slot until the gate opens
    assert gate_started.wait(5)
    for x, priority in [(1, 0), (2, 5), (3, 9), (4, 5)]:
        Probe.perform_later({"x": x}, priority=priority)
    gate.set()
    jobs.shutdown(wait=True, timeout=5)
    assert order == [-1, 3, 2, 4, 1]
    assert peak == 1


def test_pool_failure_is_logged_with_id_and_worker_and_the_pool_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[int] = []

    class Flaky(Worker[A]):
        name = "tests.Flaky"

        def perform(self, args: A) -> None:
            if args.x == 0:
                raise RuntimeError("kaput")
            ran.append(args.x)

    jobs = app("BackgroundAsync", concurrency=2)
    jobs.register(Flaky)
    with caplog.at_level(logging.ERROR):
        bad = Flaky.perform_later({"x": 0})
        for x in range(1, 11):
            Flaky.perform_later({"x": x})
        jobs.shutdown(wait=True, timeout=5)
    assert sorted(ran) == list(range(1, 11))
    assert any(
        bad.id in r.getMessage() and "tests.Flaky" in r.getMessage() and r.exc_info for r in caplog.records
    )


def test_shutdown_drains_delayed_jobs_and_then_refuses_new_ones() -> None:
    ran: list[int] = []

    class Probe(Worker[A]):
        def perform(self, args: A) -> None:
            ran.append(args.x)

    jobs = app("BackgroundAsync")
    jobs.register(Probe)
    Probe.perform_later({"x": 1}, wait=timedelta(seconds=0.3))
    Probe.perform_later({"x": 2})
    jobs.shutdown(wait=True)
    assert sorted(ran) == [1, 2]
    with pytest.raises(ShutdownError):
        Probe.perform_later({"x": 3})


def test_shutdown_with_timeout_logs_every_job_it_could_not_run(caplog: pytest.LogCaptureFixture) -> None:
    class Probe(Worker[A]):
        def perform(self, args: A) -> None: ...

    jobs = app("BackgroundAsync")
    jobs.register(Probe)
    far = [Probe.perform_later({"x": i}, wait=timedelta(hours=1)) for i in range(3)]
    with caplog.at_level(logging.ERROR):
        jobs.shutdown(wait=True, timeout=0.2)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for handle in far:
        assert f"job {handle.id}" in logged
    assert '"x":2' in logged  # the args are in the log line, so the job can be recovered by hand


def test_jobs_queued_at_interpreter_exit_are_drained(tmp_path: object) -> None:
    script = textwrap.dedent(
        """
        import sys, time
        from pydantic import BaseModel
        from unified_jobs import Config, Jobs, Worker

        class A(BaseModel):
            x: int

        class Slow(Worker[A]):
            def perform(self, args):
                time.sleep(0.01)
                sys.stdout.write(f"ran {args.x}\\n")  # one write: print() may interleave across threads

        jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundAsync", "concurrency": 2}}))
        jobs.register(Slow)
        for x in range(50):
            Slow.perform_later({"x": x})
        print("main done", flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ran = sorted(int(n) for n in re.findall(r"ran (\d+)", out.stdout))
    assert ran == list(range(50))


def test_jobs_that_cannot_run_before_exit_are_logged_not_dropped() -> None:
    script = textwrap.dedent(
        """
        import logging
        from datetime import timedelta
        from pydantic import BaseModel
        from unified_jobs import Config, Jobs, Worker
        logging.basicConfig(level=logging.ERROR)

        class A(BaseModel):
            x: int

        class Later(Worker[A]):
            def perform(self, args): print("ran", flush=True)

        jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundAsync", "shutdown_timeout": 0.2}}))
        jobs.register(Later)
        print("id", Later.perform_later({"x": 1}, wait=timedelta(minutes=5)).id, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[1]
    assert "ran" not in out.stdout
    assert f"job {job_id}" in out.stderr and "was not run" in out.stderr


def test_a_job_raising_system_exit_is_logged_and_the_pool_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []

    class Exits(Worker[A]):
        def perform(self, args: A) -> None:
            if args.x < 2:
                raise SystemExit(3)
            ran.append(args.x)

    jobs = app("BackgroundAsync", concurrency=2)
    jobs.register(Exits)
    with caplog.at_level(logging.ERROR):
        for x in range(6):
            Exits.perform_later({"x": x})
        jobs.shutdown(wait=True, timeout=10)
    assert sorted(ran) == [2, 3, 4, 5]
    assert sum("failed" in r.getMessage() for r in caplog.records) == 2


def test_jobs_enqueued_by_running_jobs_during_shutdown_are_run() -> None:
    ran: list[str] = []

    class Child(Worker[A]):
        def perform(self, args: A) -> None:
            ran.append(f"child{args.x}")

    class Parent(Worker[A]):
        def perform(self, args: A) -> None:
            time.sleep(0.05)
            Child.perform_later({"x": args.x})
            ran.append(f"parent{args.x}")

    jobs = app("BackgroundAsync", concurrency=2)
    jobs.register(Child)
    jobs.register(Parent)
    for x in range(3):
        Parent.perform_later({"x": x})
    jobs.shutdown(wait=True, timeout=10)
    assert sorted(ran) == ["child0", "child1", "child2", "parent0", "parent1", "parent2"]
    with pytest.raises(ShutdownError):
        Child.perform_later({"x": 9})


def test_the_exit_drain_runs_jobs_that_use_thread_pools() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys
        from concurrent.futures import ThreadPoolExecutor
        from pydantic import BaseModel
        from unified_jobs import Config, Jobs, Worker

        class A(BaseModel):
            x: int

        class UsesThreads(Worker[A]):
            async def perform(self, args):
                await asyncio.to_thread(sys.stdout.write, f"to_thread {args.x}\\n")
                with ThreadPoolExecutor(1) as ex:
                    ex.submit(sys.stdout.write, f"executor {args.x}\\n").result()

        jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundAsync", "concurrency": 2}}))
        jobs.register(UsesThreads)
        for x in range(6):
            UsesThreads.perform_later({"x": x})
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(int(n) for n in re.findall(r"executor (\d+)", out.stdout)) == list(range(6)), out.stderr
    assert "failed" not in out.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_runs_its_own_jobs() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from pydantic import BaseModel
        from unified_jobs import Config, Jobs, Worker

        class A(BaseModel):
            who: str

        class Say(Worker[A]):
            def perform(self, args):
                sys.stdout.write(f"{args.who} ran in {os.getpid()}\\n")
                sys.stdout.flush()

        jobs = Jobs(Config.from_dict({"workers": {"mode": "BackgroundAsync"}}))
        jobs.register(Say)
        Say.perform_later({"who": "parent-warmup"})  # the pool's threads exist before the fork
        pid = os.fork()
        if pid == 0:
            Say.perform_later({"who": "child"})
            jobs.shutdown(wait=True, timeout=10)
            os._exit(0)
        os.waitpid(pid, 0)
        jobs.shutdown(wait=True, timeout=10)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "child ran in" in out.stdout, out.stdout + out.stderr
    assert "was not run" not in out.stderr
