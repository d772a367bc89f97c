"""The Redis hot paths' packed commands (``redis_client.PackedCalls``), on a Redis of the test's
own: what they send is what redis-py would, their connections stay clean after an error reply,
a forked child never shares its parent's socket, the job store falls back to redis-py's call
(which retries a dropped connection and reloads a forgotten script), and the worker's ack
removes both of kombu's unacked entries, under a ``global_keyprefix`` too."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.procs import PrivateRedis
from unified_jobs.adapters.celery.kinds.redis import RedisJobStore
from unified_jobs.adapters.celery.kinds.redis_client import PackedCalls, pack_command
from unified_jobs.core.job import Job, new_job_id
from unified_jobs.core.outcome import Outcome

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    yield server
    server.stop()


def job() -> Job:
    return Job(id=new_job_id(), name="w.Echo", queue="default", kwargs_json='{"n": 1}')


def test_pack_command_encodes_as_redis_py_does() -> None:
    from redis.connection import Encoder, PythonRespSerializer

    args = ["EVALSHA", "ab", 2, "k\u00e9y", b"raw\x00", 1.5, -3, 0.1]
    theirs = b"".join(PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode).pack(*args))
    assert pack_command(args) == theirs
    for bad in (None, True, object()):
        with pytest.raises(TypeError, match="must be str, bytes, int or float"):
            pack_command(["SET", "k", bad])  # type: ignore[list-item]


def test_packed_calls_answer_keep_their_connection_after_an_error_reply_and_drop_it_mid_replies(
    server: PrivateRedis,
) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    calls = PackedCalls(client.connection_pool)
    try:
        assert calls(pack_command(["SET", "k", "v"])) == "OK"
        assert calls(pack_command(["SET", "n", 1]) + pack_command(["INCRBY", "n", 2]), replies=2) == ["OK", 3]
        (conn,) = calls._free
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            calls(pack_command(["LPUSH", "k", "x"]))
        assert calls._free == [conn], "an error reply read whole leaves the connection usable"
        assert calls(pack_command(["GET", "k"])) == "v"
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            calls(pack_command(["LPUSH", "k", "x"]) + pack_command(["GET", "k"]), replies=2)
        assert calls._free == [], "a reply left unread: the connection is dropped, not reused"
        assert calls(pack_command(["GET", "n"])) == "3", "the next call connects anew"
        (conn,) = calls._free
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            calls(pack_command(["GET", "k"]) + pack_command(["LPUSH", "k", "x"]), replies=2)
        assert calls._free == [conn], "the error was the last reply: every reply read, kept"
        assert calls(pack_command(["GET", "k"])) == "v"
    finally:
        calls.close()
        client.close()


def test_a_forked_child_makes_connections_of_its_own(server: PrivateRedis) -> None:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    calls = PackedCalls(client.connection_pool)
    try:
        calls(pack_command(["CLIENT", "SETNAME", "parent"]))
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its first call must not use the parent's socket
            name = calls(pack_command(["CLIENT", "GETNAME"]))
            os.write(write, repr(name).encode())
            os._exit(0)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        assert os.WEXITSTATUS(status) == 0
        assert os.read(read, 100).decode() == "None", "the child's call went on a connection of its own"
        assert calls(pack_command(["CLIENT", "GETNAME"])) == "parent", "the parent's connection is untouched"
    finally:
        calls.close()
        client.close()


def test_the_store_falls_back_to_redis_py_after_a_dropped_connection_or_a_forgotten_script(
    server: PrivateRedis,
) -> None:
    store = RedisJobStore(server.url, shares_broker=True)
    admin = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        first, second, third = job(), job(), job()
        store.push_enqueued(first, "default", "m1")
        assert store._packed._free, "the enqueue went through the packed call"
        admin.client_kill_filter(_type="normal", skipme=True)  # drops every connection of the store
        store.push_enqueued(second, "default", "m2")  # the packed call fails; redis-py's retries
        admin.script_flush()  # as a restarted server forgets its scripts
        store.push_enqueued(third, "default", "m3")
        assert admin.lrange("default", 0, -1) == ["m3", "m2", "m1"]
        assert [store.get(j.id).status for j in (first, second, third)] == ["queued"] * 3  # type: ignore[union-attr]
        admin.script_flush()
        assert store.record_started(first).deliveries == 1
        store.record_outcome(first, Outcome("succeeded", 1))
        info = store.get(first.id)
        assert info is not None and info.status == "completed"
    finally:
        admin.close()
        store.close()


@pytest.mark.parametrize("prefix", ["", "app1:"])
def test_an_ack_removes_the_unacked_entry_and_its_index_entry(server: PrivateRedis, prefix: str) -> None:
    from kombu import Connection

    transport = "unified_jobs.adapters.celery.kinds.redis_transport:Transport"
    client = redis.Redis.from_url(server.url, decode_responses=True)
    options = {"global_keyprefix": prefix} if prefix else {}
    try:
        with Connection(server.url, transport=transport, transport_options=options) as conn:
            queue = conn.SimpleQueue("acks")
            queue.put({"n": 1})
            queue.put({"n": 2})
            message = queue.get(timeout=5)
            keep = queue.get(timeout=5)
            assert client.hlen(f"{prefix}unacked") == 2 and client.zcard(f"{prefix}unacked_index") == 2
            message.ack()
            assert client.hkeys(f"{prefix}unacked") == [keep.delivery_tag]
            assert client.zrange(f"{prefix}unacked_index", 0, -1) == [keep.delivery_tag]
            qos = queue.channel.qos
            qos._flush()  # kombu's own bookkeeping: an acked tag leaves _delivered at its next flush
            assert message.delivery_tag not in qos._delivered and keep.delivery_tag in qos._delivered
            keep.ack()
            assert client.hlen(f"{prefix}unacked") == 0 and client.zcard(f"{prefix}unacked_index") == 0
            queue.close()
    finally:
        client.close()
