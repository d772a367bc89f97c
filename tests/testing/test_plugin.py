"""The pytest plugin, used as a user would: pytester runs small test files.

The plugin is not named with ``-p``: it is loaded by the ``pytest11`` entry point, as in a
user's project where ``unified-jobs`` is installed.
"""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins: list[str] = []  # pytester is enabled by this folder's conftest

# As in this project's pyproject.toml: keep pytest-celery and the cache out of the inner runs.
# The inner runs are in-process, where unified_jobs is already imported, so pytest cannot
# assertion-rewrite the plugin's package and warns; a user's own pytest process does not.
BASE_ARGS = (
    "-p",
    "no:celery",
    "-p",
    "no:cacheprovider",
    "--strict-markers",
    "-W",
    "ignore::pytest.PytestAssertRewriteWarning",
)

WORKERS = """
    from pydantic import BaseModel
    from unified_jobs import Worker

    SENT = []

    class EmailArgs(BaseModel):
        user_id: int
        template: str = "welcome"

    class WelcomeEmail(Worker[EmailArgs]):
        def perform(self, args):
            SENT.append(args.user_id)

    class SignupArgs(BaseModel):
        email: str

    class Signup(Worker[SignupArgs]):
        def perform(self, args):
            WelcomeEmail.perform_later({"user_id": len(args.email)})

    class Loop(Worker[EmailArgs]):
        def perform(self, args):
            Loop.perform_later(args)

    class Broken(Worker[EmailArgs]):
        def perform(self, args):
            raise KeyError(f"no user {args.user_id}")
"""

USERS_APP = """
    from pydantic import BaseModel
    from unified_jobs import Jobs, Worker
    from unified_jobs.config import Config, WorkersConfig

    # The user's app as production builds it: not ForegroundBlocking.
    jobs = Jobs(Config(workers=WorkersConfig(mode="BackgroundAsync")), context={"db": "test-db"})
    SENT = []

    class EmailArgs(BaseModel):
        user_id: int

    @jobs.register
    class WelcomeEmail(Worker[EmailArgs]):
        def perform(self, args):
            SENT.append((args.user_id, self.ctx["db"]))

    def signup(user_id):
        WelcomeEmail.perform_later({"user_id": user_id})
"""

USERS_TESTS = """
    import pytest
    import myapp
    from unified_jobs.adapters.inprocess import InProcessAdapter
    from unified_jobs.testing import assert_enqueued, perform_enqueued_jobs

    ORIGINAL = myapp.jobs.adapter

    def test_override_runs_the_users_app_inline(jobs_override):
        assert jobs_override is myapp.jobs
        myapp.signup(1)
        assert myapp.SENT == [(1, "test-db")]

    @pytest.mark.unified_jobs_mode("Recording")
    def test_override_in_recording_mode(jobs_override):
        myapp.signup(2)
        assert_enqueued(myapp.WelcomeEmail, args={"user_id": 2})
        perform_enqueued_jobs()
        assert myapp.SENT[-1] == (2, "test-db")

    def test_recorder_records_the_users_app(jobs_recorder):
        assert jobs_recorder.app is myapp.jobs
        myapp.signup(3)
        assert_enqueued(myapp.WelcomeEmail, args={"user_id": 3}, count=1)

    def test_fails_while_overridden(jobs_override):
        myapp.signup(4)
        assert False, "fails on purpose"

    def test_rebinds_the_users_worker_then_fails(inline_jobs):
        inline_jobs.register(myapp.WelcomeEmail)
        assert myapp.WelcomeEmail._unified_jobs_app is inline_jobs
        raise RuntimeError("fails on purpose too")

    def test_everything_is_restored():
        assert myapp.jobs.adapter is ORIGINAL
        assert isinstance(ORIGINAL, InProcessAdapter)
        assert myapp.WelcomeEmail._unified_jobs_app is myapp.jobs
        assert [n for n, _ in myapp.SENT] == [1, 2, 4]  # 3 was only recorded
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest(*BASE_ARGS, *args)


def make_users_project(pytester: pytest.Pytester, ini: str | None = "myapp:jobs") -> None:
    pytester.syspathinsert()
    pytester.makepyfile(myapp=textwrap.dedent(USERS_APP))
    if ini is not None:
        pytester.makeini(f"[pytest]\nunified_jobs_app = {ini}\n")


# -- loading ---------------------------------------------------------------------------------


def test_the_entry_point_loads_the_plugin_and_its_fixtures(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_loaded(request):
            assert request.config.pluginmanager.has_plugin("unified_jobs")
        """
    )
    run(pytester).assert_outcomes(passed=1)
    listing = run(pytester, "--fixtures")
    for name in ("inline_jobs", "jobs_recorder", "jobs_override", "unified_jobs_app", "unified_jobs_context"):
        listing.stdout.fnmatch_lines([f"{name} -- *pytest_plugin.py*"])


def test_a_separate_pytest_process_loads_it_too(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_loaded(inline_jobs):
            assert inline_jobs.mode == "ForegroundBlocking"
        """
    )
    # A user's own process: every installed plugin (pytest-celery too) and no warning filter.
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, warnings=0)


def test_projects_that_do_not_use_it_are_unaffected(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_plain():
            assert 1 + 1 == 2
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, warnings=0)
    result.stdout.no_fnmatch_line("*unified_jobs*")  # no config needed, nothing printed
    run(pytester, "-p", "no:unified_jobs").assert_outcomes(passed=1)


# -- fresh apps: passing ---------------------------------------------------------------------


def test_fresh_app_fixtures_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        workers=textwrap.dedent(WORKERS),
        test_fresh=textwrap.dedent(
            """
            import pytest
            from workers import SENT, Signup, WelcomeEmail
            from unified_jobs.testing import (
                aperform_enqueued_jobs, assert_enqueued, assert_not_enqueued, enqueued_jobs,
                perform_enqueued_jobs,
            )

            @pytest.fixture(autouse=True)
            def _clear():
                SENT.clear()

            def test_inline(inline_jobs):
                inline_jobs.register(WelcomeEmail)
                WelcomeEmail.perform_later({"user_id": 1})
                assert SENT == [1]

            def test_recorded(jobs_recorder):
                jobs_recorder.app.register(Signup)
                jobs_recorder.app.register(WelcomeEmail)
                Signup.perform_later({"email": "ada@example.com"})
                assert_enqueued(Signup, args={"email": "ada@example.com"})
                assert_not_enqueued(WelcomeEmail)
                assert SENT == []
                perform_enqueued_jobs()
                assert SENT == [15]
                assert enqueued_jobs() == []

            @pytest.mark.anyio
            async def test_recorded_async(jobs_recorder):
                jobs_recorder.app.register(WelcomeEmail)
                await WelcomeEmail.aperform_later({"user_id": 2})
                assert_enqueued(WelcomeEmail, count=1)
                await aperform_enqueued_jobs()
                assert SENT == [2]

            @pytest.fixture
            def unified_jobs_context():
                return {"db": "sqlite://"}

            def test_context(inline_jobs):
                assert inline_jobs.context == {"db": "sqlite://"}
            """
        ),
    )
    run(pytester, "-p", "anyio").assert_outcomes(passed=4)


# -- fresh apps: failing, and what the failure shows -----------------------------------------


def test_a_failed_assert_enqueued_shows_the_diff_and_the_jobs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        workers=textwrap.dedent(WORKERS),
        test_fails=textwrap.dedent(
            """
            from workers import Signup, WelcomeEmail
            from unified_jobs.testing import assert_enqueued

            def test_wrong_args(jobs_recorder):
                jobs_recorder.app.register(WelcomeEmail)
                jobs_recorder.app.register(Signup)
                WelcomeEmail.perform_later({"user_id": 2})
                Signup.perform_later({"email": "a@b.c"})
                assert_enqueued(WelcomeEmail, args={"user_id": 1})
            """
        ),
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            '>       assert_enqueued(WelcomeEmail, args={"user_id": 1})',
            "E       AssertionError: expected a job of WelcomeEmail with args "
            '{"template": "welcome", "user_id": 1}, found 0',
            "E       closest enqueued args (- expected, + enqueued):",
            "E           --- expected args",
            "E           +++ enqueued args (job *)",
            'E           -  "user_id": 1',
            'E           +  "user_id": 2',
            "E       enqueued jobs (2):",
            'E           1. workers.WelcomeEmail queue=default args={"template": "welcome", "user_id": 2}',
            'E           2. workers.Signup queue=default args={"email": "a@b.c"}',
        ]
    )
    # The helper's own frames are hidden: the failure points at the test's line.
    assert "unified_jobs/testing.py" not in result.stdout.str()


def test_other_failures_read_well(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        workers=textwrap.dedent(WORKERS),
        test_fails=textwrap.dedent(
            """
            from workers import Broken, Loop, WelcomeEmail
            from unified_jobs.testing import assert_not_enqueued, perform_enqueued_jobs

            def test_not_enqueued(jobs_recorder):
                jobs_recorder.app.register(WelcomeEmail)
                WelcomeEmail.perform_later({"user_id": 5})
                assert_not_enqueued(WelcomeEmail)

            def test_endless(jobs_recorder):
                jobs_recorder.app.register(Loop)
                Loop.perform_later({"user_id": 1})
                perform_enqueued_jobs(limit=5)

            def test_job_error_propagates(jobs_recorder):
                jobs_recorder.app.register(Broken)
                Broken.perform_later({"user_id": 6})
                perform_enqueued_jobs()

            def test_nothing_recording():
                assert_not_enqueued(WelcomeEmail)
            """
        ),
    )
    result = run(pytester)
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "E       AssertionError: expected no job of WelcomeEmail, found 1",
            "E       enqueued jobs (1):",
            'E           1. workers.WelcomeEmail queue=default args={"template": "welcome", "user_id": 5}',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E       unified_jobs.errors.TooManyJobsError: perform_enqueued_jobs stopped at its "
            "limit of 5 jobs with 1 still enqueued; a job probably enqueues itself*",
            'E           1. workers.Loop queue=default args={"template": "welcome", "user_id": 1}',
        ]
    )
    result.stdout.fnmatch_lines(
        ['*raise KeyError(f"no user {args.user_id}")', "E       KeyError: 'no user 6'"]
    )
    result.stdout.fnmatch_lines(
        ["E       unified_jobs.errors.NoRecorderError: *use the jobs_recorder fixture*"]
    )


# -- the user's own app ----------------------------------------------------------------------


def test_the_users_app_is_overridden_and_restored_even_after_failures(pytester: pytest.Pytester) -> None:
    make_users_project(pytester)
    pytester.makepyfile(test_users_app=textwrap.dedent(USERS_TESTS))
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines(
        ["*_ test_fails_while_overridden _*", "E       AssertionError: fails on purpose"]
    )
    result.stdout.fnmatch_lines(
        ["*_ test_rebinds_the_users_worker_then_fails _*", "E       RuntimeError: fails on purpose too"]
    )


def test_the_app_can_be_given_on_the_command_line(pytester: pytest.Pytester) -> None:
    make_users_project(pytester, ini=None)
    pytester.makepyfile(
        """
        import myapp

        def test_it(jobs_override):
            assert jobs_override is myapp.jobs
        """
    )
    run(pytester, "--unified-jobs-app", "myapp:jobs").assert_outcomes(passed=1)


def test_the_app_can_be_given_by_overriding_the_fixture(pytester: pytest.Pytester) -> None:
    make_users_project(pytester, ini=None)
    pytester.makeconftest(
        """
        import pytest
        import myapp

        @pytest.fixture
        def unified_jobs_app():
            return myapp.jobs
        """
    )
    pytester.makepyfile(
        """
        import myapp

        def test_inline(jobs_override):
            myapp.signup(9)
            assert myapp.SENT == [(9, "test-db")]
        """
    )
    run(pytester).assert_outcomes(passed=1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("myapp", "*unified_jobs_app 'myapp' must look like module:attribute*"),
        ("nosuchmodule:jobs", "*cannot import 'nosuchmodule' (from unified_jobs_app nosuchmodule:jobs)*"),
        ("myapp:nope", "*myapp has no attribute 'nope' (from unified_jobs_app myapp:nope)*"),
        ("myapp:SENT", "*unified_jobs_app myapp:SENT is a list, not a unified_jobs.Jobs*"),
    ],
)
def test_a_wrong_app_setting_is_a_clear_error(pytester: pytest.Pytester, spec: str, message: str) -> None:
    make_users_project(pytester, ini=spec)
    pytester.makepyfile("def test_it(jobs_override):\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])


def test_override_without_an_app_says_how_to_give_one(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_it(jobs_override):\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*jobs_override needs your app: set the ini option unified_jobs_app*"])


def test_an_unknown_mode_in_the_marker_is_a_clear_error(pytester: pytest.Pytester) -> None:
    make_users_project(pytester)
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.unified_jobs_mode("Eager")
        def test_it(jobs_override):
            pass
        """
    )
    result = run(pytester)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [
            "*unified_jobs_mode('Eager'): the mode must be one of "
            "ForegroundBlocking, BackgroundAsync, Recording*"
        ]
    )
