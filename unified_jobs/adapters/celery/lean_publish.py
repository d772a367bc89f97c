"""A Worker job's message, built as Celery's ``send_task`` and kombu's ``Producer.publish`` build
it, without their per-call machinery (routing, option merging, the producer pool, ``ensure``,
the queue declaration): the Redis kind pushes it with the job's record in one command, and the
SQL kinds insert a batch's rows in one statement.

The message is Celery's own: the headers, properties and body that ``app.amqp.as_task_v2``
(the function ``send_task`` calls) writes with what ``send_task`` passes it (the task's time
limits, the thread's reply queue, the parent and root of a job enqueued from a task), in
kombu's virtual transport's envelope (``prepare_message`` and what ``basic_publish`` adds).
It is written as JSON text, field for field in Celery's order, from a template per worker and
queue (``payload``). ``tests/integration/test_lean_publish.py`` compares it, field by field,
with what ``send_task`` pushes for the same jobs.

Used only where nothing in the app's configuration could make Celery publish the message
differently (``usable``): otherwise, ``send_task`` as before.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

from celery import signals
from celery._state import get_current_worker_task
from celery.utils.nodenames import anon_nodename
from celery.utils.saferepr import saferepr
from kombu.transport import redis as kombu_redis

from unified_jobs.core.job import Job

__all__ = ["LeanPublisher"]

#: Task options a Worker's Celery task may carry that this builder handles; any other
#: (``Task._get_exec_options``: a queue, exchange, priority, expires... of the task's own)
#: leaves the message to ``send_task``.
_HANDLED_OPTIONS = frozenset({"serializer", "time_limit", "soft_time_limit"})
#: Settings that change how Celery publishes, at these values: the lean path is the same.
_PLAIN_SETTINGS = {
    "task_send_sent_event": False,
    "task_routes": None,
    "task_compression": None,
    "task_serializer": "json",
    "task_protocol": 2,
    "task_inherit_parent_priority": False,
}


class LeanPublisher:
    """Builds a Worker job's message (``payload``) for the Redis kind's list and the SQL kinds' rows."""

    def __init__(self, app: Any, own_router: Any = None) -> None:
        self.app = app
        #: The bridge's router (a Worker to its queue): the queue is given explicitly here.
        self.own_router = own_router
        self._usable: dict[tuple[str, str], bool] = {}
        self._templates: dict[tuple[str, str], _Template] = {}  # by worker and queue

    def usable(self, job: Job) -> bool:
        """Whether ``send_task`` would publish ``job`` as ``payload`` writes it."""
        # Anyone listening to the publish (``before_task_publish`` may change the message).
        if signals.before_task_publish.receivers or signals.after_task_publish.receivers:
            return False
        key = (job.name, job.queue)
        known = self._usable.get(key)
        if known is None:  # the settings are read once a worker and queue (they are slow to read)
            known = self._usable[key] = self._settings_allow(job)
        return known

    def _settings_allow(self, job: Job) -> bool:
        app = self.app
        conf = app.conf
        for key, value in _PLAIN_SETTINGS.items():
            setting = conf.get(key)
            if key == "task_routes" and setting and all(r == self.own_router for r in setting):
                continue
            if setting != value and not (value is None and not setting):
                return False
        options = app.conf.broker_transport_options or {}
        if options.get("global_keyprefix"):
            return False
        task = app.tasks.get(job.name)
        if task is None:
            return False
        exec_options = {k: v for k, v in task._get_exec_options().items() if v is not None}
        if set(exec_options) - _HANDLED_OPTIONS or exec_options.get("serializer", "json") != "json":
            return False
        queue = app.amqp.queues.get(job.queue)
        return queue is None or getattr(queue.exchange, "type", "direct") == "direct"

    def list_key(self, queue: str, priority: int) -> str:
        """The Redis list kombu's Redis transport pushes a message of ``priority`` to."""
        return f"{queue}{kombu_redis.Channel.sep}{priority}" if priority else queue

    def payload(self, job: Job, headers: dict[str, Any], priority: int) -> str:
        """The JSON text of ``job``'s message (due at its ``run_at``, or now) as kombu's
        virtual transports hand it to their ``_put`` (and the Redis one pushes it): what
        ``app.amqp.as_task_v2`` and kombu's ``prepare_message`` make of it, with ``headers``
        added to Celery's. Written as text from a template of what is the same for every job of
        its worker and queue, without the dicts (their allocation and garbage collection were
        most of a batch's cost). The body is the job's own JSON (``[args, kwargs, embed]``):
        it decodes to what Celery's serializer writes."""
        template = self._templates.get((job.name, job.queue))
        if template is None or template.pid != os.getpid():  # origin names the process
            template = self._templates[(job.name, job.queue)] = self._template(job)
        dumps = json.dumps
        task_id = dumps(job.id)
        root_id = task_id
        parent_id = "null"
        parent = get_current_worker_task()
        if parent:  # enqueued from a task: its root and parent
            root_id = dumps(parent.request.root_id or parent.request.id)
            parent_id = dumps(parent.request.id)
        args_json, kwargs_json = job.args_json, job.kwargs_json
        argsrepr = _EMPTY_ARGSREPR
        if args_json != "[]":
            argsrepr = dumps(self._repr(json.loads(args_json) or (), template.argsrepr_maxsize))
        kwargsrepr = dumps(self._repr(json.loads(kwargs_json) or {}, template.kwargsrepr_maxsize))
        run_at = job.run_at
        eta = dumps(run_at.isoformat()) if run_at else "null"
        body = base64.b64encode(f"[{args_json}, {kwargs_json}, {_EMBED}]".encode()).decode("ascii")
        extra = "".join(f", {dumps(k)}: {dumps(v)}" for k, v in headers.items()) if headers else ""
        return (
            f'{{"body": "{body}", "content-encoding": "utf-8", "content-type": "application/json", '
            f'"headers": {{{template.headers_before_id}"id": {task_id}, "shadow": null, "eta": {eta}, '
            '"expires": null, "group": null, "group_index": null, "retries": 0, '
            f'"timelimit": {template.timelimit}, "root_id": {root_id}, "parent_id": {parent_id}, '
            f'"argsrepr": {argsrepr}, "kwargsrepr": {kwargsrepr}, {template.headers_after_repr}{extra}}}, '
            f'"properties": {{"correlation_id": {task_id}, "reply_to": {dumps(self.app.thread_oid)}, '
            f'{template.properties}, "priority": {int(priority)}, "body_encoding": "base64", '
            f'"delivery_tag": "{uuid.uuid4()}"}}}}'
        )

    def _template(self, job: Job) -> _Template:
        """The JSON of what ``as_task_v2`` and ``prepare_message`` write the same for every
        job of ``job``'s worker and queue in this process."""
        app = self.app
        amqp = app.amqp
        task = app.tasks[job.name]
        dumps = json.dumps
        queue = amqp.queues.get(job.queue)
        mode = getattr(getattr(queue, "exchange", None), "delivery_mode", None)
        mode = mode or _delivery_mode(app.conf.task_default_delivery_mode)
        delivery = {"exchange": "", "routing_key": job.queue}
        return _Template(
            pid=os.getpid(),
            headers_before_id=f'"lang": "py", "task": {dumps(job.name)}, ',
            timelimit=dumps([getattr(task, "time_limit", None), getattr(task, "soft_time_limit", None)]),
            # ignore_result: send_task passes the option's, None unless given.
            headers_after_repr=(
                f'"origin": {dumps(anon_nodename())}, "ignore_result": null, '
                '"replaced_task_nesting": 0, "stamped_headers": null, "stamps": {}'
            ),
            properties=f'"delivery_mode": {dumps(mode)}, "delivery_info": {dumps(delivery)}',
            argsrepr_maxsize=amqp.argsrepr_maxsize,
            kwargsrepr_maxsize=amqp.kwargsrepr_maxsize,
        )

    def _repr(self, value: Any, maxsize: int) -> str:
        """``as_task_v2``'s ``argsrepr``/``kwargsrepr`` of ``value``: Celery's ``saferepr``."""
        text = plain_repr(value, maxsize)
        if text is None:
            text = saferepr(value, maxsize, maxlevels=self.app.conf.task_repr_maxlevels)
        return text


@dataclass(frozen=True)
class _Template:
    """JSON fragments of a message, in Celery's order of its fields."""

    pid: int
    headers_before_id: str
    timelimit: str
    headers_after_repr: str
    properties: str
    argsrepr_maxsize: int
    kwargsrepr_maxsize: int


#: The argsrepr of a Worker job's (empty) args, as JSON.
_EMPTY_ARGSREPR = json.dumps(repr(()))
#: The body's third part, Celery's embed, as kombu's JSON serializer writes it.
_EMBED = '{"callbacks": null, "errbacks": null, "chain": null, "chord": null}'


def _delivery_mode(mode: Any) -> int:
    """kombu's delivery mode number (2: persistent, 1: transient) of a setting's value."""
    if isinstance(mode, int):
        return mode
    return 1 if str(mode).lower() == "transient" else 2


#: Exact types (a subclass, an IntEnum say, has a repr of its own).
_SCALARS = frozenset({bool, int, float, type(None)})


def _plain_str(text: str) -> bool:
    """Whether ``repr(text)`` is what Celery's ``saferepr`` writes: printable ASCII that needs
    no escaping and no choice of quotes."""
    return text.isascii() and text.isprintable() and "'" not in text and '"' not in text and "\\" not in text


def _plain(value: Any) -> bool:
    kind = type(value)
    return kind in _SCALARS or (kind is str and _plain_str(value))


def plain_repr(value: Any, maxsize: int | None) -> str | None:
    """``repr(value)`` where it is what ``celery.utils.saferepr.saferepr(value, maxsize)`` returns
    (about 20 times faster): a flat dict of plain keys and values, or a flat list or tuple of
    plain values, well under ``maxsize``; None otherwise (then ``as_task_v2`` calls saferepr)."""
    if type(value) is dict:
        if not all(type(k) is str and _plain_str(k) and _plain(v) for k, v in value.items()):
            return None
    elif type(value) in (list, tuple):
        if not all(_plain(v) for v in value):
            return None
    else:
        return None
    text = repr(value)
    return text if maxsize is None or len(text) < maxsize // 2 else None
