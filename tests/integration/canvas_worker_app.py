"""The canvas project as a worker process loads it (``celery -A`` / ``unified-jobs --app``):
mode, broker, result backend and queue section from the environment (``CANVAS_SETUP``)."""

from __future__ import annotations

import json
import os

from tests.integration.canvas_project import make_app

_setup = json.loads(os.environ["CANVAS_SETUP"])
app, jobs = make_app(
    _setup["mode"], broker=_setup.get("broker"), backend=_setup.get("backend"), queue=_setup.get("queue")
)
