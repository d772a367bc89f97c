"""The adopting guide's Django recipe, as written: its ``proj/celery.py`` block is taken from
docs/guides/adopting-celery.md into Celery's own Django layout ("First steps with Django"), and
the project is driven with ``manage.py`` and a stock ``celery -A proj worker``, as a Django
project runs it: ForegroundBlocking for tests (tasks, Workers and a chain inline), and a
BackgroundQueue on a SQLite file where the stock worker runs both."""

from __future__ import annotations

import json
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import IN_CI
from tests.procs import BIN, ROOT, WorkerProcess, read_records, wait_until

try:
    import django  # noqa: F401
except ImportError:  # pragma: no cover - the dev extra installs it
    if IN_CI:
        raise
    pytest.skip("the Django recipe needs Django (pip install -e '.[dev]')", allow_module_level=True)

GUIDE = ROOT / "docs" / "guides" / "adopting-celery.md"

FILES = {
    "manage.py": """
        import os
        import sys

        if __name__ == "__main__":
            os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")
            from django.core.management import execute_from_command_line

            execute_from_command_line(sys.argv)
    """,
    "proj/__init__.py": """
        from .celery import app as celery_app

        __all__ = ("celery_app",)
    """,
    "proj/settings.py": """
        import os

        SECRET_KEY = "not-a-secret"
        INSTALLED_APPS = ["shop"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        USE_TZ = True
        CELERY_TASK_DEFAULT_QUEUE = "shop-default"
    """,
    "shop/__init__.py": "",
    "shop/tasks.py": """
        import json
        import os

        from celery import shared_task
        from pydantic import BaseModel

        from proj.celery import jobs
        from unified_jobs import Worker


        def record(**fields):
            with open(os.environ["RECORDS"], "a") as out:
                out.write(json.dumps(fields) + "\\n")


        @shared_task
        def add(x, y):
            record(task="add", value=x + y)
            return x + y


        class ReceiptArgs(BaseModel):
            order: int


        @jobs.register
        class SendReceipt(Worker[ReceiptArgs]):
            def perform(self, args: ReceiptArgs) -> None:
                record(task="receipt", order=args.order, queue=self.queue)
    """,
    "config/test.yaml": "workers:\n  mode: ForegroundBlocking\n",
}

SHELL = """
from celery import chain
from shop.tasks import SendReceipt, add
print(json.dumps({
    "add": add.delay(1, 2).get(),
    "chain": chain(add.s(1, 2), add.s(10)).apply_async().get(),
    "receipt": SendReceipt.perform_later({"order": 7}).queue,
}))
"""


def guide_block() -> str:
    section = GUIDE.read_text(encoding="utf-8").split("## Step by step: a Django project", 1)[1]
    match = re.search(r"```python\n(# proj/celery.py\n.*?)```", section, re.S)
    assert match, "the guide's Django section has no `# proj/celery.py` block"
    return match.group(1)


@pytest.fixture
def project(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "site"
    for name, text in {**FILES, "proj/celery.py": guide_block()}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    db = tmp_path / "queue.db"
    (root / "config" / "production.yaml").write_text(
        f"workers:\n  mode: BackgroundQueue\nqueue:\n  kind: Sqlite\n  uri: sqlite:///{db}\n",
        encoding="utf-8",
    )
    return {"root": str(root), "RECORDS": str(tmp_path / "records.jsonl")}


def manage(project: dict[str, str], env: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "python"), "manage.py", *args],
        cwd=project["root"],
        env={
            **os.environ,
            "RECORDS": project["RECORDS"],
            "UNIFIED_JOBS_ENV": env,
            "PYTHONPATH": project["root"],
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_manage_py_in_foreground_blocking_runs_tasks_workers_and_chains_inline(
    project: dict[str, str],
) -> None:
    result = manage(project, "test", "shell", "-c", "import json\n" + SHELL)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "add": 3,
        "chain": 13,
        "receipt": "shop-default",
    }
    records = read_records(Path(project["RECORDS"]))
    assert {"task": "receipt", "order": 7, "queue": "shop-default"} in records


def test_a_stock_celery_worker_runs_the_django_projects_tasks_and_workers(
    project: dict[str, str], tmp_path: Path
) -> None:
    env = {"RECORDS": project["RECORDS"], "UNIFIED_JOBS_ENV": "production", "PYTHONPATH": project["root"]}
    send = manage(
        project,
        "production",
        "shell",
        "-c",
        "from shop.tasks import SendReceipt, add\nadd.delay(2, 3)\nSendReceipt.perform_later({'order': 8})",
    )
    assert send.returncode == 0, send.stderr
    worker = WorkerProcess(
        [
            str(BIN / "celery"),
            "--workdir",
            project["root"],
            "-A",
            "proj",
            "worker",
            "-c",
            "1",
            "-l",
            "INFO",
            "--without-mingle",
            "--without-gossip",
        ],
        env,
        tmp_path / "worker.log",
    )
    try:
        assert wait_until(lambda: len(read_records(Path(project["RECORDS"]))) >= 2, timeout=60), (
            worker.output()[-3000:]
        )
    finally:
        worker.stop()
    tasks = sorted(r["task"] for r in read_records(Path(project["RECORDS"])))
    assert tasks == ["add", "receipt"]
    assert "shop.tasks.SendReceipt" in worker.output()  # listed among the worker's tasks
