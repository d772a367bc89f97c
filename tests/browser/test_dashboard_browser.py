"""The dashboard in a real browser (Debian's chromium, driven by Playwright), on every kind:
Postgres, SQLite, Redis and RabbitMQ with a real `unified-jobs start --worker` and a real
`unified-jobs dashboard` process, and the in-process pool of a BackgroundAsync app served by
`unified-jobs start -s` with the dashboard mounted in it.

Each kind gets jobs in every state (``dashboard_app.seed``); the test loads every page, checks
what it shows, and clicks every action through its confirmation page: retry a failed job (and
sees it complete), discard one, run a scheduled job now (it completes), cancel another, run a
recurring schedule now, purge a queue. Screenshots go to the test's folder, and to
``UJ_SCREENSHOTS`` (docs/images) when that is set: ``make screenshots``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    IN_CI,
    PG_HOST,
    PG_PORT,
    PG_URL,
    clear_sql_jobs,
    drop_rabbitmq_vhost,
    make_rabbitmq_vhost,
    require_rabbitmq,
    require_service,
    sql_prefix,
)
from tests.flower import start_flower
from tests.procs import (
    BIN,
    PrivateRedis,
    WorkerProcess,
    free_port,
    unified_jobs_worker,
    wait_for_http,
    wait_until,
)

pytestmark = pytest.mark.timeout(180)

CHROMIUM = os.environ.get("UJ_CHROMIUM", "/usr/bin/chromium")
APP = "tests.browser.dashboard_app:jobs"
KINDS = ["Postgres", "Sqlite", "Redis", "RabbitMQ", "inprocess"]
#: The kind whose screenshots docs/ shows.
DOCS_KIND = "Postgres"


def _require_chromium() -> None:
    reason = None
    if not Path(CHROMIUM).exists():
        reason = f"no chromium at {CHROMIUM} (apt install chromium; .ci/run does)"
    else:
        try:
            import playwright  # noqa: F401
        except ImportError:
            reason = "playwright is not installed (pip install -e '.[dev]')"
    if reason is not None:
        if IN_CI:
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield launched
        launched.close()


@dataclass
class Site:
    """One kind's dashboard, its jobs, and how to ask a job's status."""

    kind: str
    base: str  # the dashboard's URL, without a trailing slash
    ids: dict[str, list[str]]
    status: Callable[[str], str | None]
    folder: Path
    release: Callable[[], None]
    #: Whether the kind can make a delayed job due now (not RabbitMQ: its delay queues).
    can_run_now: bool = True


def _config(kind: str, tmp: Path) -> tuple[dict[str, Any], Callable[[], None]]:
    """The app's config for ``kind``, and what to clean up after."""
    if kind == "Postgres":
        require_service("PostgreSQL", PG_HOST, PG_PORT)
        prefix = sql_prefix("browser")
        clear_sql_jobs(PG_URL, prefix)
        queue = {"kind": "Postgres", "uri": PG_URL, "table_prefix": prefix}
        return {"workers": {"mode": "BackgroundQueue"}, "queue": queue}, lambda: None
    if kind == "Sqlite":
        uri = f"sqlite:///{tmp / 'jobs.db'}"
        return {"workers": {"mode": "BackgroundQueue"}, "queue": {"kind": "Sqlite", "uri": uri}}, lambda: None
    if kind == "Redis":
        redis = PrivateRedis(tmp)
        queue = {"kind": "Redis", "uri": redis.url}
        return {"workers": {"mode": "BackgroundQueue"}, "queue": queue}, redis.stop
    if kind == "RabbitMQ":
        require_rabbitmq()
        store = PrivateRedis(tmp)
        uri = make_rabbitmq_vhost("browser")
        queue = {"kind": "RabbitMQ", "uri": uri, "store_uri": store.url}

        def cleanup() -> None:
            drop_rabbitmq_vhost(uri)
            store.stop()

        return {"workers": {"mode": "BackgroundQueue"}, "queue": queue}, cleanup
    # shutdown_timeout: the delayed jobs of an hour need not hold the stop for its default 10 s.
    return {"workers": {"mode": "BackgroundAsync", "concurrency": 4, "shutdown_timeout": 1}}, lambda: None


def _http_json(method: str, url: str) -> Any:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module", params=KINDS)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    kind: str = request.param
    folder = tmp_path_factory.mktemp(f"browser-{kind}")
    flags = folder / "flags"
    flags.mkdir()
    (flags / "broken").touch()
    config, cleanup = _config(kind, folder)
    env = {"UJ_DASH_CONFIG": json.dumps(config), "UJ_DASH_DIR": str(flags)}
    processes: list[WorkerProcess] = []
    os.environ.update(env)  # the test's own app (queue kinds) reads the same
    try:
        port = free_port()
        if kind == "inprocess":
            argv = [str(BIN / "unified-jobs"), "--app", APP, "start", "-s"]
            argv += ["--server", "tests.browser.dashboard_web:app", "--port", str(port)]
            server = WorkerProcess(argv, env, folder / "server.log")
            processes.append(server)
            wait_for_http(f"http://127.0.0.1:{port}/dashboard/queues", proc=server)
            ids = _http_json("POST", f"http://127.0.0.1:{port}/seed")

            def status(job_id: str) -> str | None:
                return _http_json("GET", f"http://127.0.0.1:{port}/status/{job_id}")["status"]  # type: ignore[no-any-return]

            base = f"http://127.0.0.1:{port}/dashboard"
            can_run_now = True
        else:
            from tests.browser import dashboard_app

            jobs = dashboard_app.create_app()
            # Not the queue "parked": its jobs stay queued, for the purge.
            args: tuple[str, ...] = ("--concurrency", "2", "--queue", "default")
            if kind == DOCS_KIND:  # task events, for Flower (test_flower_...)
                args += ("--", "-E")
            worker = unified_jobs_worker(APP, env, folder / "worker.log", *args)
            processes.append(worker)
            argv = [str(BIN / "unified-jobs"), "--app", APP, "dashboard", "--port", str(port)]
            dashboard = WorkerProcess(argv, env, folder / "dashboard.log")
            processes.append(dashboard)
            worker.wait_for_output("ready", timeout=60)
            wait_for_http(f"http://127.0.0.1:{port}/queues", proc=dashboard)
            ids = dashboard_app.seed(jobs)
            status = jobs.status  # type: ignore[assignment]
            base = f"http://127.0.0.1:{port}"
            can_run_now = jobs.adapter.can_run_now
        expected = {"completed": "completed", "failed": "failed", "processing": "processing"}
        expected.update({"retrying": "retrying", "scheduled": "scheduled"})
        for role, state in expected.items():
            for job_id in ids[role]:
                assert wait_until(lambda j=job_id, s=state: status(j) == s, 30), (
                    f"{kind}: {role} job {job_id} is {status(job_id)}, not {state}"
                )
        release = lambda: (flags / "release").touch()  # noqa: E731
        yield Site(kind, base, ids, status, folder, release, can_run_now)
    finally:
        (flags / "release").touch()
        for proc in reversed(processes):
            proc.stop()
        for var in env:
            os.environ.pop(var, None)
        cleanup()


def _shot(page: Any, site: Site, name: str) -> None:
    path = site.folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    target = os.environ.get("UJ_SCREENSHOTS")
    if target and site.kind == DOCS_KIND:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / f"dashboard-{name}.png")


def _confirm(page: Any, link: Any) -> None:
    """Click an action's link, then the confirmation page's button."""
    link.click()
    page.wait_for_url(re.compile(r".*/confirm/.*"))
    page.locator("form.confirm button[type=submit]").click()
    page.wait_for_load_state()


def _eventually(site: Site, job_id: str, state: str, timeout: float = 30) -> None:
    assert wait_until(lambda: site.status(job_id) == state, timeout), (
        f"{site.kind}: job {job_id} is {site.status(job_id)}, not {state}"
    )


def test_every_page_and_action(browser: Any, site: Site) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    ids = site.ids

    # Queues: both queues, the counts of every status, the chart of what ended.
    page.goto(f"{site.base}/queues")
    queues = page.locator("table.queues")
    assert "default" in queues.inner_text() and "parked" in queues.inner_text()
    counts = page.locator("section.counts").inner_text()
    assert re.search(r"\b[1-9]\d* completed", counts) and re.search(r"\b[1-9]\d* failed", counts), counts
    assert page.locator("svg.chart rect.done").count() >= 1
    _shot(page, site, "queues")

    # Jobs: every status listed; filters by status, worker and text in the arguments.
    page.goto(f"{site.base}/jobs")
    listed = page.locator("table.jobs tbody").inner_text()
    for role in ("completed", "failed", "processing", "retrying", "scheduled"):
        assert ids[role][0][:8] in listed, f"{role} job missing from /jobs"
    _shot(page, site, "jobs")
    page.select_option("select[name=status]", "failed")
    page.click("form.filters button[type=submit]")
    rows = page.locator("table.jobs tbody tr")
    assert rows.count() == 2 and "dash.Flaky" in rows.first.inner_text()
    page.goto(f"{site.base}/jobs?q=dash.Slow-1")
    assert page.locator("table.jobs tbody tr").count() == 1
    assert "processing" in page.locator("table.jobs tbody").inner_text()
    page.goto(f"{site.base}/jobs?worker=dash.Retrier")
    assert "retrying" in page.locator("table.jobs tbody").inner_text()

    # A failed job's page: args (the secret masked), attempts, the error and its traceback.
    failed_id, other_failed = ids["failed"]
    page.goto(f"{site.base}/jobs/{failed_id}")
    body = page.locator("main").inner_text()
    assert "the flaky job 1 is broken today" in body and "Traceback" in body
    assert "***" in body and "hunter2" not in page.content()
    _shot(page, site, "job")

    # Failed: retry one (now fixed) and see it run; discard the other.
    page.goto(f"{site.base}/failed")
    _shot(page, site, "failed")
    (Path(os.environ["UJ_DASH_DIR"]) / "broken").unlink()
    _confirm(page, page.locator(f"tr:has(a[href$='/jobs/{failed_id}']) a.action-retry"))
    assert "enqueued again" in page.locator("p.flash").inner_text()
    _eventually(site, failed_id, "completed")
    assert failed_id[:8] not in page.locator("table.jobs").inner_text()  # back on /failed, gone
    page.goto(f"{site.base}/jobs/{failed_id}")
    assert "completed" in page.locator("main h1").inner_text()
    page.goto(f"{site.base}/failed")
    _confirm(page, page.locator(f"tr:has(a[href$='/jobs/{other_failed}']) a.action-discard"))
    assert "discarded" in page.locator("p.flash").inner_text()
    assert other_failed[:8] not in page.locator("table.jobs").inner_text()
    assert site.status(other_failed) is None

    # Scheduled: the recurring schedule's next run, delayed jobs; run one now, cancel another,
    # and run the recurring schedule now.
    page.goto(f"{site.base}/scheduled")
    schedules = page.locator("table.schedules").inner_text()
    assert "nightly" in schedules and "0 3 * * *" in schedules
    _shot(page, site, "scheduled")
    soon, never = ids["scheduled"]
    run_now = page.locator(f"tr:has(a[href$='/jobs/{soon}']) a.action-run-now")
    if site.can_run_now:
        _confirm(page, run_now)
        assert "is due now" in page.locator("p.flash").inner_text()
        _eventually(site, soon, "completed")
    else:
        assert run_now.count() == 0, "no Run now where the kind cannot move a waiting job"
    _confirm(page, page.locator(f"tr:has(a[href$='/jobs/{never}']) a.action-cancel"))
    assert "cancelled" in page.locator("p.flash").inner_text()
    assert site.status(never) == "cancelled"
    _confirm(page, page.locator("a.action-run-schedule"))
    flash = page.locator("p.flash").inner_text()
    found = re.search(r"Enqueued job (\S+) of schedule nightly", flash)
    assert found, flash
    _eventually(site, found.group(1), "completed")

    # Workers: alive ("ok": beating and polling), with the running slow job. A worker beats
    # every 10 s (workers.heartbeat_interval): its first beats may predate the slow job's
    # start, so the page is read again until a beat names it (one interval and a margin).
    def workers_page() -> str:
        page.goto(f"{site.base}/workers")
        return page.locator("table.workers tbody").inner_text()  # type: ignore[no-any-return]

    wait_until(lambda: ids["processing"][0][:8] in workers_page(), 15, interval=0.5)
    workers = page.locator("table.workers tbody").inner_text()
    assert page.locator("table.workers span.state-ok").count() >= 1, workers
    assert ids["processing"][0][:8] in workers, workers
    _shot(page, site, "workers")

    # Purge the queue no worker consumes: its jobs never run.
    page.goto(f"{site.base}/queues")
    _confirm(page, page.locator("tr:has(a:text-is('parked')) a.action-purge"))
    assert re.search(r"Purged [1-9]\d* job\(s\) from queue parked", page.locator("p.flash").inner_text())
    for job_id in ids["parked"]:
        assert site.status(job_id) in ("cancelled", None, "completed"), job_id
    parked = page.locator("tr:has(a:text-is('parked'))").inner_text().split()
    assert parked[1:3] == ["0", "0"], parked  # none queued, none scheduled

    site.release()
    _eventually(site, ids["processing"][0], "completed")
    assert not errors, f"the browser saw script errors: {errors}"
    page.close()


@pytest.mark.parametrize("site", [DOCS_KIND], indirect=True)
def test_flower_on_postgres_shows_the_worker_and_its_tasks(browser: Any, site: Site) -> None:
    """Flower, pointed at the same app, sees the worker (remote control over the SQL transport's
    broadcast) and the jobs it ran (task events)."""
    env = {"UJ_DASH_CONFIG": os.environ["UJ_DASH_CONFIG"], "UJ_DASH_DIR": os.environ["UJ_DASH_DIR"]}
    flower = start_flower("tests.browser.dashboard_app:celery", env, site.folder / "flower.log")
    try:
        flower.wait_ready()
        from playwright.sync_api import expect

        from tests.browser import dashboard_app

        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(f"{flower.url}/workers")
        # Once Flower lists the worker, it receives its events: a job run now shows up.
        expect(page.locator("table#workers-table")).to_contain_text("celery@", timeout=20_000)
        jobs = dashboard_app.create_app()
        handle = jobs.perform_later(jobs.worker("dash.Hello"), {"n": 77, "note": "seen-by-flower"})
        _eventually(site, handle.id, "completed")
        _shot(page, site, "flower-workers")
        assert wait_until(lambda: handle.id in json.dumps(flower.get_json("/api/tasks")), 20), flower.output()
        page.goto(f"{flower.url}/task/{handle.id}")
        expect(page.locator("body")).to_contain_text("dash.Hello", timeout=10_000)
        _shot(page, site, "flower-task")
        page.close()
        jobs.shutdown()
    finally:
        flower.stop()
