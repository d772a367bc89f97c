"""A user's project folder for running ``unified-jobs`` in this process (``cli.main``), fast:
an app module of its own name (each test imports a fresh one), a config, stdout and stderr."""

from __future__ import annotations

import os
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from unified_jobs.cli import main

APP = """
    from pathlib import Path

    from pydantic import BaseModel

    from unified_jobs import Jobs, Worker

    {prelude}

    class Args(BaseModel):
        n: int
        note: str = ""


    jobs = Jobs.from_config(config_dir=Path(__file__).parent / "config"{celery})


    @jobs.register
    class ReportWorker(Worker[Args]):
        name = "shop.ReportWorker"
        queue = "reports"

        def perform(self, args: Args) -> None:
            pass
"""


@dataclass
class Result:
    code: int
    out: str
    err: str


class Project:
    """``run(*args)`` is ``unified-jobs --app <module>:jobs ARGS`` in ``path``."""

    def __init__(
        self, path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.path = path
        self.module = f"cli_app_{uuid.uuid4().hex[:12]}"
        self._capsys = capsys
        monkeypatch.chdir(path)
        monkeypatch.syspath_prepend(str(path))
        for name in [k for k in os.environ if k.startswith("UNIFIED_JOBS_")]:
            monkeypatch.delenv(name)
        (path / "config").mkdir(exist_ok=True)

    def write(self, queue_yaml: str, *, prelude: str = "", celery: str = "") -> None:
        """The app module and ``config/development.yaml`` (BackgroundQueue on this queue)."""
        app = textwrap.dedent(APP).format(
            prelude=textwrap.dedent(prelude), celery=f", celery_app={celery}" if celery else ""
        )
        (self.path / f"{self.module}.py").write_text(app)
        config = "workers:\n  mode: BackgroundQueue\nqueue:\n" + textwrap.indent(
            textwrap.dedent(queue_yaml), "  "
        )
        (self.path / "config" / "development.yaml").write_text(config)

    def run(self, *args: str) -> Result:
        self._capsys.readouterr()
        try:
            # as the console script does: sys.exit(main())
            code = int(main(["--app", f"{self.module}:jobs", *args]) or 0)
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = self._capsys.readouterr()
        return Result(code, captured.out, captured.err)

    def close(self) -> None:
        module: Any = sys.modules.pop(self.module, None)
        if module is not None:
            module.jobs.shutdown(wait=False)
