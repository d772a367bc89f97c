"""The adopting guide's Flask recipe, as written: its ``celery_init_app`` block is taken from
docs/guides/adopting-celery.md and used as a Flask project does (Flask's own "Background Tasks
with Celery" layout). In BackgroundAsync, a progress page reading ``update_state`` and
``.get()`` work without a worker, and a Worker opens the Flask app context from its context."""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REDIS_HOST, REDIS_PORT, flush_redis_db, redis_url, require_service
from tests.procs import ROOT, wait_until

GUIDE = ROOT / "docs" / "guides" / "adopting-celery.md"

PROJECT = """
    from celery import shared_task
    from flask import Flask, current_app, jsonify
    from pydantic import BaseModel

    from unified_jobs import Worker
    from example import celery_init_app

    SEEN: list[str] = []


    def create_app(backend: str) -> Flask:
        app = Flask("example")
        app.config.from_mapping(CELERY=dict(result_backend=backend, task_ignore_result=False))
        celery_init_app(app)

        @app.post("/count/<int:n>")
        def start(n: int) -> Any:
            return jsonify(id=count.delay(n).id)

        @app.get("/count/<id>")
        def progress(id: str) -> Any:
            result = count.AsyncResult(id)
            return jsonify(state=result.state, info=result.info if result.state != "SUCCESS" else None,
                           value=result.get() if result.ready() else None)

        return app


    @shared_task(bind=True, ignore_result=False)
    def count(self, n: int) -> int:
        for i in range(n):
            self.update_state(state="PROGRESS", meta={"done": i, "of": n})
            time.sleep(0.2)
        return n


    class NoteArgs(BaseModel):
        text: str


    class Note(Worker[NoteArgs]):
        def perform(self, args: NoteArgs) -> None:
            with self.ctx.app_context():  # the Flask app is the Jobs context (the guide's step 3)
                SEEN.append(f"{current_app.name}: {args.text}")
"""


def guide_block() -> str:
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## Step by step: a Flask project", 1)[1]
    match = re.search(r"```python\n(# example/__init__.py\n.*?)```", section, re.S)
    assert match, "the guide's Flask section has no `# example/__init__.py` block"
    return match.group(1)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    flush_redis_db("canvas_results")
    (tmp_path / "example").mkdir()
    (tmp_path / "example" / "__init__.py").write_text(guide_block(), encoding="utf-8")
    body = "from typing import Any\nimport time\n" + textwrap.dedent(PROJECT)
    (tmp_path / "flask_project.py").write_text(body, encoding="utf-8")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "development.yaml").write_text(
        "workers:\n  mode: BackgroundAsync\n", encoding="utf-8"
    )
    monkeypatch.setenv("UNIFIED_JOBS_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.syspath_prepend(str(tmp_path))
    import flask_project  # type: ignore[import-not-found]

    yield flask_project
    for name in ("flask_project", "example"):
        sys.modules.pop(name, None)


def test_the_flask_recipe_runs_tasks_and_workers_in_background_async(project: Any) -> None:
    app = project.create_app(redis_url("canvas_results"))
    jobs = app.extensions["jobs"]
    try:
        assert jobs.mode == "BackgroundAsync"
        jobs.register(project.Note)
        client = app.test_client()
        task_id = client.post("/count/4").get_json()["id"]
        assert wait_until(
            lambda: client.get(f"/count/{task_id}").get_json()["state"] == "PROGRESS", timeout=10
        )
        page = client.get(f"/count/{task_id}").get_json()
        assert page["info"]["of"] == 4  # the progress page reads update_state's meta
        assert wait_until(lambda: client.get(f"/count/{task_id}").get_json()["value"] == 4, timeout=20)
        project.Note.perform_later({"text": "hello"})
        assert wait_until(lambda: project.SEEN == ["example: hello"], timeout=10), project.SEEN
    finally:
        jobs.shutdown(wait=True, timeout=20)
