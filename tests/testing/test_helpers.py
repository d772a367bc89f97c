"""unified_jobs.testing: recording, the assertion helpers, perform_enqueued_jobs."""

from __future__ import annotations

import asyncio
import re

import pytest

from tests.testing.conftest import make_app
from tests.testing.workers import (
    CALLS,
    AsyncReport,
    Boom,
    Countdown,
    EmailArgs,
    Forever,
    Signup,
    SignupArgs,
    WelcomeEmail,
)
from unified_jobs import Jobs
from unified_jobs.adapters.inline import InlineAdapter
from unified_jobs.adapters.inprocess import InProcessAdapter
from unified_jobs.adapters.recording import RecordingAdapter
from unified_jobs.errors import InvalidOptionError, UnifiedJobsError
from unified_jobs.testing import (
    JobRecorder,
    NoRecorderError,
    TooManyJobsError,
    _preserved_worker_bindings,
    aperform_enqueued_jobs,
    assert_enqueued,
    assert_not_enqueued,
    clear_enqueued_jobs,
    current_recorder,
    enqueued_jobs,
    override_mode,
    perform_enqueued_jobs,
    recording,
)

# -- switching modes -------------------------------------------------------------------------


def test_recording_swaps_the_adapter_and_restores_it_even_on_error(app: Jobs) -> None:
    original = app.adapter
    with pytest.raises(RuntimeError, match="in the block"), recording(app) as recorder:
        assert app.adapter is recorder.adapter
        assert isinstance(app.adapter, RecordingAdapter)
        assert current_recorder() is recorder
        raise RuntimeError("in the block")
    assert app.adapter is original
    assert not recorder.active
    with pytest.raises(NoRecorderError):
        current_recorder()


def test_jobs_stay_readable_after_the_recorder_stops(app: Jobs) -> None:
    with recording(app) as recorder:
        WelcomeEmail.perform_later({"user_id": 1})
    assert [job.kwargs for job in recorder.enqueued_jobs()] == [{"user_id": 1, "template": "welcome"}]
    recorder.assert_enqueued(WelcomeEmail, args={"user_id": 1})


def test_start_stop_without_with(app: Jobs) -> None:
    recorder = JobRecorder(app).start()
    try:
        with pytest.raises(UnifiedJobsError, match="already started"):
            recorder.start()
        Signup.perform_later({"user_id": 1})
        assert CALLS == []
    finally:
        recorder.stop()
    recorder.stop()  # a second stop is harmless
    Signup.perform_later({"user_id": 2})  # inline again
    assert CALLS == [("Signup", 2), ("WelcomeEmail", 2)]


def test_override_mode_foreground_blocking_and_back() -> None:
    app = make_app("BackgroundAsync")
    app.register(Signup)
    app.register(WelcomeEmail)
    original = app.adapter
    try:
        with pytest.raises(RuntimeError), override_mode(app, "ForegroundBlocking"):
            assert isinstance(app.adapter, InlineAdapter)
            Signup.perform_later({"user_id": 4})
            assert CALLS == [("Signup", 4), ("WelcomeEmail", 4)]
            raise RuntimeError("the test failed")
        assert app.adapter is original
    finally:
        app.shutdown()


def test_override_mode_background_async_drains_on_exit(app: Jobs) -> None:
    original = app.adapter
    with override_mode(app, "BackgroundAsync"):
        assert isinstance(app.adapter, InProcessAdapter)
        for n in range(50):
            WelcomeEmail.perform_later({"user_id": n})
    assert app.adapter is original
    assert sorted(value for _, value in CALLS) == list(range(50))


def test_override_mode_recording_makes_the_recorder_current(app: Jobs) -> None:
    with override_mode(app, "Recording"):
        WelcomeEmail.perform_later({"user_id": 1})
        assert_enqueued(WelcomeEmail, args={"user_id": 1})
    assert isinstance(app.adapter, InlineAdapter)


def test_override_mode_rejects_unknown_modes(app: Jobs) -> None:
    expected = "'ForegroundBlocking', 'BackgroundAsync' or 'Recording'"
    with pytest.raises(InvalidOptionError, match=expected), override_mode(app, "Eager"):  # type: ignore[arg-type]
        pass


# -- reading and asserting -------------------------------------------------------------------


def test_enqueued_jobs_filters_and_exposes_the_job(app: Jobs) -> None:
    with recording(app):
        WelcomeEmail.perform_later({"user_id": 1})
        Signup.perform_later({"user_id": 2}, queue="signups")
        WelcomeEmail.perform_later({"user_id": 3}, queue="signups", priority=5)

        assert [j.name for j in enqueued_jobs()] == [WelcomeEmail.name, Signup.name, WelcomeEmail.name]
        assert [j.kwargs["user_id"] for j in enqueued_jobs(WelcomeEmail)] == [1, 3]
        assert [j.kwargs["user_id"] for j in enqueued_jobs(queue="signups")] == [2, 3]
        [job] = enqueued_jobs(WelcomeEmail, queue="signups")
        assert job.worker is WelcomeEmail
        assert job.args == EmailArgs(user_id=3)
        assert job.priority == 5
        assert job.run_at is None
        assert job.queue == "signups"
        assert job.id == job.job.id
        assert (
            str(job)
            == f'{WelcomeEmail.name} queue=signups priority=5 args={{"template": "welcome", "user_id": 3}}'
        )


def test_assert_enqueued_passes_with_dict_model_count_and_queue(app: Jobs) -> None:
    with recording(app):
        WelcomeEmail.perform_later({"user_id": 1})
        WelcomeEmail.perform_later(EmailArgs(user_id=1))
        WelcomeEmail.perform_later({"user_id": 2}, queue="later")

        assert len(assert_enqueued(WelcomeEmail)) == 3
        assert len(assert_enqueued(WelcomeEmail, args={"user_id": 1}, count=2)) == 2
        # A dict is validated first, so defaults count: this is the same JSON.
        assert_enqueued(WelcomeEmail, args={"user_id": 1, "template": "welcome"}, count=2)
        assert_enqueued(WelcomeEmail, args=EmailArgs(user_id=2), queue="later", count=1)
        assert_enqueued(WelcomeEmail, queue="mail", count=2)
        assert_enqueued(Signup, count=0)


def test_assert_enqueued_failure_shows_a_diff_and_every_job(app: Jobs) -> None:
    with recording(app):
        WelcomeEmail.perform_later({"user_id": 2})
        Signup.perform_later({"user_id": 9})
        with pytest.raises(AssertionError) as failure:
            assert_enqueued(WelcomeEmail, args={"user_id": 1})

    message = str(failure.value)
    assert message.startswith(
        'expected a job of WelcomeEmail with args {"template": "welcome", "user_id": 1}, found 0\n'
    )
    assert "closest enqueued args (- expected, + enqueued):" in message
    assert '    -  "user_id": 1\n' in message
    assert '    +  "user_id": 2\n' in message
    assert "enqueued jobs (2):" in message
    assert f'1. {WelcomeEmail.name} queue=mail args={{"template": "welcome", "user_id": 2}}' in message
    assert f'2. {Signup.name} queue=default args={{"user_id": 9}}' in message


def test_assert_enqueued_diff_picks_the_closest_job(app: Jobs) -> None:
    with recording(app):
        WelcomeEmail.perform_later({"user_id": 500, "template": "promo"})
        WelcomeEmail.perform_later({"user_id": 1, "template": "promo"})
        with pytest.raises(AssertionError) as failure:
            assert_enqueued(WelcomeEmail, args={"user_id": 1})
    message = str(failure.value)
    assert '    -  "template": "welcome",\n    +  "template": "promo",\n' in message
    assert '+  "user_id": 500' not in message


def test_assert_enqueued_failure_messages_for_count_queue_and_no_jobs(app: Jobs) -> None:
    with recording(app):
        with pytest.raises(
            AssertionError, match=r"(?s)expected a job of WelcomeEmail, found 0\nno jobs were enqueued"
        ):
            assert_enqueued(WelcomeEmail)

        WelcomeEmail.perform_later({"user_id": 1})
        with pytest.raises(AssertionError, match="expected 2 jobs of WelcomeEmail, found 1"):
            assert_enqueued(WelcomeEmail, count=2)
        with pytest.raises(AssertionError, match="expected 0 jobs of WelcomeEmail, found 1"):
            assert_enqueued(WelcomeEmail, count=0)
        with pytest.raises(AssertionError) as failure:
            assert_enqueued(WelcomeEmail, args={"user_id": 1}, queue="other")
    assert "on queue 'other', found 0\na job with exactly these args is on queue 'mail'" in str(failure.value)


def test_args_that_do_not_validate_are_a_clear_error(app: Jobs) -> None:
    with recording(app), pytest.raises(InvalidOptionError, match="args= does not validate as EmailArgs"):
        assert_enqueued(WelcomeEmail, args={"user": 1})


def test_assert_not_enqueued(app: Jobs) -> None:
    with recording(app):
        assert_not_enqueued()
        WelcomeEmail.perform_later({"user_id": 1})
        assert_not_enqueued(Signup)
        assert_not_enqueued(WelcomeEmail, args={"user_id": 2})
        with pytest.raises(AssertionError) as failure:
            assert_not_enqueued(WelcomeEmail, args={"user_id": 1})
        assert str(failure.value).startswith(
            'expected no job of WelcomeEmail with args {"template": "welcome", "user_id": 1}, found 1\n'
            "enqueued jobs (1):"
        )
        with pytest.raises(AssertionError, match="expected no job, found 1"):
            assert_not_enqueued()
        with pytest.raises(InvalidOptionError, match="needs the worker class"):
            assert_not_enqueued(args={"user_id": 1})


def test_clear_enqueued_jobs(app: Jobs) -> None:
    with recording(app):
        WelcomeEmail.perform_later({"user_id": 1})
        clear_enqueued_jobs()
        assert enqueued_jobs() == []
        assert_not_enqueued()


def test_long_listings_are_cut(app: Jobs) -> None:
    with recording(app):
        for n in range(60):
            WelcomeEmail.perform_later({"user_id": n})
        with pytest.raises(AssertionError) as failure:
            assert_enqueued(Signup)
    message = str(failure.value)
    assert "enqueued jobs (60):" in message
    assert "    50. " in message and "    51. " not in message
    assert message.endswith("    ... and 10 more")


# -- which recorder --------------------------------------------------------------------------


def test_no_recorder_is_a_clear_error(app: Jobs) -> None:
    with pytest.raises(NoRecorderError, match="use the jobs_recorder fixture"):
        assert_enqueued(WelcomeEmail)


def test_helpers_find_the_recorder_of_the_workers_app(app: Jobs) -> None:
    other = make_app()
    other.register(Countdown)
    with recording(app) as mine, recording(other) as theirs:
        WelcomeEmail.perform_later({"user_id": 1})
        Countdown.perform_later({"n": 0})
        assert current_recorder(WelcomeEmail) is mine
        assert current_recorder(Countdown) is theirs
        assert current_recorder() is theirs  # started last
        assert_enqueued(WelcomeEmail, count=1)
        assert_enqueued(Countdown, count=1)
        assert [j.name for j in enqueued_jobs()] == [Countdown.name]


def test_a_worker_whose_app_is_not_recorded_is_a_clear_error(app: Jobs) -> None:
    other = make_app()
    with recording(other), pytest.raises(NoRecorderError) as failure:
        assert_enqueued(WelcomeEmail)
    message = str(failure.value)
    assert "WelcomeEmail is registered with <Jobs" in message
    assert "not in recording mode" in message
    assert "unified_jobs_app" in message


# -- performing ------------------------------------------------------------------------------


def test_perform_runs_jobs_and_the_jobs_they_enqueue(app: Jobs) -> None:
    with recording(app):
        Signup.perform_later({"user_id": 1})
        Countdown.perform_later({"n": 2})
        assert CALLS == []
        done = perform_enqueued_jobs()
        assert [j.name for j in done] == [
            Signup.name,
            Countdown.name,
            WelcomeEmail.name,
            Countdown.name,
            Countdown.name,
        ]
        assert CALLS == [
            ("Signup", 1),
            ("Countdown", 2),
            ("WelcomeEmail", 1),
            ("Countdown", 1),
            ("Countdown", 0),
        ]
        assert enqueued_jobs() == []
        assert perform_enqueued_jobs() == []


def test_perform_only_leaves_other_jobs_recorded(app: Jobs) -> None:
    with recording(app):
        Signup.perform_later({"user_id": 1})
        Countdown.perform_later({"n": 0})
        perform_enqueued_jobs(only=Signup)
        assert CALLS == [("Signup", 1)]
        assert [j.name for j in enqueued_jobs()] == [Countdown.name, WelcomeEmail.name]
        perform_enqueued_jobs(only=iter([WelcomeEmail, Countdown]))
        assert CALLS == [("Signup", 1), ("Countdown", 0), ("WelcomeEmail", 1)]
        assert enqueued_jobs() == []


def test_perform_stops_at_the_limit_with_a_clear_error(app: Jobs) -> None:
    with recording(app):
        Forever.perform_later({"n": 0})
        with pytest.raises(TooManyJobsError) as failure:
            perform_enqueued_jobs(limit=10)
        assert str(failure.value).startswith(
            "perform_enqueued_jobs stopped at its limit of 10 jobs with 1 still enqueued"
        )
        assert re.search(r'1\. \S+Forever queue=default args=\{"n": 10\}', str(failure.value))
        assert isinstance(failure.value, AssertionError)

        clear_enqueued_jobs()
        Countdown.perform_later({"n": 9})  # exactly 10 jobs: within the limit
        assert len(perform_enqueued_jobs(limit=10)) == 10
        with pytest.raises(InvalidOptionError, match="limit= takes a positive int"):
            perform_enqueued_jobs(limit=0)


def test_perform_propagates_exceptions_and_drops_the_failed_job(app: Jobs) -> None:
    with recording(app):
        Boom.perform_later({"user_id": 3})
        WelcomeEmail.perform_later({"user_id": 4})
        with pytest.raises(RuntimeError, match="boom 3"):
            perform_enqueued_jobs()
        assert [j.name for j in enqueued_jobs()] == [WelcomeEmail.name]
        perform_enqueued_jobs()
        assert CALLS == [("WelcomeEmail", 4)]


def test_perform_runs_async_perform(app: Jobs) -> None:
    with recording(app):
        AsyncReport.perform_later({"user_id": 8})
        perform_enqueued_jobs()
    [(name, (user_id, _loop))] = CALLS
    assert (name, user_id) == ("AsyncReport", 8)


def test_aperform_runs_async_perform_on_the_callers_loop(app: Jobs) -> None:
    async def scenario() -> int:
        with recording(app):
            await AsyncReport.aperform_later({"user_id": 1})
            await Signup.aperform_later({"user_id": 2})
            done = await aperform_enqueued_jobs()
            assert [j.name for j in done] == [AsyncReport.name, Signup.name, WelcomeEmail.name]
        return id(asyncio.get_running_loop())

    loop_id = asyncio.run(scenario())
    assert [("AsyncReport", (1, loop_id)), ("Signup", 2), ("WelcomeEmail", 2)] == CALLS


def test_perform_builds_a_fresh_worker_with_the_context_per_job(
    app: Jobs, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[Signup, SignupArgs]] = []

    def spy(self: Signup, args: SignupArgs) -> None:
        seen.append((self, args))

    monkeypatch.setattr(Signup, "perform", spy)
    original = SignupArgs(user_id=1)
    with recording(app):
        Signup.perform_later(original)
        Signup.perform_later(original)
        perform_enqueued_jobs()
    (first, first_args), (second, second_args) = seen
    assert first is not second
    assert isinstance(first, Signup)
    assert first.ctx is app.context
    assert first.ctx == {"name": "test-context"}
    assert first_args == original
    assert first_args is not original and first_args is not second_args  # rebuilt from the JSON


# -- worker bindings -------------------------------------------------------------------------


def test_preserved_worker_bindings_undoes_rebinding(app: Jobs) -> None:
    fresh = make_app()
    with _preserved_worker_bindings(throwaway=[fresh]):
        fresh.register(WelcomeEmail)
        assert WelcomeEmail._unified_jobs_app is fresh
    assert WelcomeEmail._unified_jobs_app is app


def test_preserved_worker_bindings_unbinds_only_from_throwaway_apps() -> None:
    from pydantic import BaseModel

    from unified_jobs import Worker

    class A(BaseModel):
        n: int

    class Unbound(Worker[A]):
        def perform(self, args: A) -> None: ...

    class LaterBound(Worker[A]):
        def perform(self, args: A) -> None: ...

    fresh, users_app = make_app(), make_app()
    with _preserved_worker_bindings(throwaway=[fresh]):
        fresh.register(Unbound)
        users_app.register(LaterBound)  # e.g. a module imported for the first time during the test
    assert Unbound._unified_jobs_app is None
    assert LaterBound._unified_jobs_app is users_app


def test_a_job_cancelled_while_recorded_never_runs_even_once_discarded(app: Jobs) -> None:
    with recording(app) as recorder:
        cancelled = WelcomeEmail.perform_later({"user_id": 1})
        kept = WelcomeEmail.perform_later({"user_id": 2})
        assert app.cancel(cancelled) and app.status(cancelled) == "cancelled"
        assert [job.id for job in recorder.adapter.jobs] == [kept.id]
        assert app.discard(cancelled) and app.status(cancelled) is None
        assert [job.id for job in perform_enqueued_jobs()] == [kept.id]
        assert CALLS == [("WelcomeEmail", 2)]
        assert not app.cancel(kept)  # completed: nothing to cancel


def test_the_recorder_keeps_completed_records_for_workers_keep_completed() -> None:
    from unified_jobs import Config
    from unified_jobs.config import WorkersConfig

    jobs = Jobs(Config(workers=WorkersConfig(mode="ForegroundBlocking", keep_completed=0)))
    jobs.register(WelcomeEmail)
    with recording(jobs):
        handle = WelcomeEmail.perform_later({"user_id": 3})
        assert jobs.status(handle) == "queued"
        perform_enqueued_jobs()
        assert CALLS == [("WelcomeEmail", 3)]
        assert jobs.status(handle) is None  # kept for 0 s, as the other in-memory modes do
    jobs.shutdown()
