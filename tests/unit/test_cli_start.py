from __future__ import annotations

import pytest
from pydantic import BaseModel

from unified_jobs import Config, Jobs, Worker
from unified_jobs.cli.start import select_queues
from unified_jobs.errors import UnifiedJobsError


class A(BaseModel):
    x: int


class Report(Worker[A]):
    name = "t.Report"
    tags = ("reports",)

    def perform(self, args: A) -> None: ...


class Mailer(Worker[A]):
    name = "t.Mailer"
    queue = "mail"
    tags = ("email",)

    def perform(self, args: A) -> None: ...


class Plain(Worker[A]):
    name = "t.Plain"

    def perform(self, args: A) -> None: ...


@pytest.fixture
def jobs() -> Jobs:
    app = Jobs(Config.from_dict({"workers": {"mode": "ForegroundBlocking"}}))
    for w in (Report, Mailer, Plain):
        app.register(w)
    return app


def test_tags_select_the_queues_of_tagged_workers(jobs: Jobs, capsys: pytest.CaptureFixture[str]) -> None:
    assert select_queues(jobs, (), ("email",)) == ["mail"]
    assert capsys.readouterr().err == ""


def test_a_tag_on_a_shared_queue_says_who_else_runs(jobs: Jobs, capsys: pytest.CaptureFixture[str]) -> None:
    assert select_queues(jobs, (), ("reports",)) == ["default"]
    assert "this process runs their jobs as well: t.Plain" in capsys.readouterr().err


def test_an_unknown_tag_is_an_error_listing_the_tags(jobs: Jobs) -> None:
    with pytest.raises(
        UnifiedJobsError, match=r"no registered worker has tag nope \(tags in use: email, reports\)"
    ):
        select_queues(jobs, (), ("nope",))


def test_explicit_queues_come_first_and_without_duplicates(jobs: Jobs) -> None:
    assert select_queues(jobs, ("mail", "x"), ("email",)) == ["mail", "x"]
