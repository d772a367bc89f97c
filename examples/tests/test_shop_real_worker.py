"""The third style: the shop's jobs go through a real Redis queue to a real Celery worker.

The worker runs in this process (``jobs_worker`` / ``run_worker``), so the test sees the
shop's context change. Needs Redis (``SHOP_REDIS_URL``, default database 15 on localhost).
"""

from __future__ import annotations

import os
import socket

import pytest
import redis
from shop.app import create_app
from shop.context import ShopContext
from shop.workers import BookRevenue, MakeThumbnails, SendReceipt

from unified_jobs.testing import run_worker


@pytest.fixture
def shop_on_redis(shop_ctx: ShopContext):  # type: ignore[no-untyped-def]
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        if os.environ.get("CI"):
            pytest.fail("Redis is not reachable at 127.0.0.1:6379 (CI is set)")
        pytest.skip("Redis is not reachable at 127.0.0.1:6379; start it to run this test")
    jobs = create_app(env="redis-test", context=shop_ctx)
    redis.Redis.from_url(jobs.config.queue.uri).flushdb()  # type: ignore[union-attr]
    yield jobs
    jobs.shutdown()


def test_an_order_through_redis(shop_on_redis, shop_ctx: ShopContext) -> None:  # type: ignore[no-untyped-def]
    with run_worker(shop_on_redis) as worker:
        handles = [
            SendReceipt.perform_later({"order_id": 1, "email": "ada@example.com"}),
            MakeThumbnails.perform_later({"image_url": "https://img.example.com/1.png"}),
            BookRevenue.perform_later({"order_id": 1, "subtotal_cents": 1000}),
        ]
        worker.wait_all(handles, timeout=20)
    assert dict(shop_ctx.done) == {"receipts": 1, "thumbnails": 1, "revenue": 1}
    assert shop_ctx.revenue_cents == 1200
