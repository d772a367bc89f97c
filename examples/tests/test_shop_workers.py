"""The shop's workers tested in two styles (see docs/guides/testing.md).

- inline: ``jobs_override`` switches the shop's app to ForegroundBlocking; each job runs
  before ``perform_later`` returns, after the same JSON round trip a queue makes;
- recorded: ``jobs_recorder`` records what the code enqueues; assert on it, then run it
  with ``perform_enqueued_jobs``.

The third style, a real worker on Redis, is in test_shop_real_worker.py.
"""

from __future__ import annotations

import pydantic
import pytest
from shop.context import ShopContext
from shop.workers import BookRevenue, MakeThumbnails, SendReceipt

from unified_jobs import Jobs
from unified_jobs.testing import JobRecorder, assert_enqueued, assert_not_enqueued, perform_enqueued_jobs


def place_order(order_id: int, email: str, subtotal_cents: int) -> None:
    """The code under test: what the shop does when an order is placed (as in the demo)."""
    SendReceipt.perform_later({"order_id": order_id, "email": email})
    MakeThumbnails.perform_later({"image_url": f"https://img.example.com/{order_id}.png"})
    BookRevenue.perform_later({"order_id": order_id, "subtotal_cents": subtotal_cents})


# -- inline (ForegroundBlocking) -----------------------------------------------------------


def test_an_order_runs_its_three_jobs_inline(jobs_override: Jobs, shop_ctx: ShopContext) -> None:
    place_order(1, "ada@example.com", 1000)
    assert shop_ctx.done == {"receipts": 1, "thumbnails": 1, "revenue": 1}


def test_revenue_is_booked_with_tax(jobs_override: Jobs, shop_ctx: ShopContext) -> None:
    BookRevenue.perform_later({"order_id": 2, "subtotal_cents": 1000})
    assert shop_ctx.revenue_cents == 1200


def test_a_bad_email_is_rejected_when_enqueued(jobs_override: Jobs, shop_ctx: ShopContext) -> None:
    with pytest.raises(pydantic.ValidationError, match="email"):
        SendReceipt.perform_later({"order_id": 3, "email": "not-an-email"})
    assert shop_ctx.total_done == 0


# -- recorded ------------------------------------------------------------------------------


def test_an_order_enqueues_its_jobs_on_their_queues(
    jobs_recorder: JobRecorder, shop_ctx: ShopContext
) -> None:
    place_order(7, "ada@example.com", 2500)

    assert_enqueued(SendReceipt, args={"order_id": 7, "email": "ada@example.com"}, queue="mailers")
    assert_enqueued(MakeThumbnails, args={"image_url": "https://img.example.com/7.png"}, queue="media")
    assert_enqueued(BookRevenue, args={"order_id": 7, "subtotal_cents": 2500}, count=1)
    assert shop_ctx.total_done == 0  # recorded, not run

    performed = perform_enqueued_jobs()
    assert [job.worker for job in performed] == [SendReceipt, MakeThumbnails, BookRevenue]
    assert shop_ctx.done == {"receipts": 1, "thumbnails": 1, "revenue": 1}
    assert shop_ctx.revenue_cents == 3000


def test_only_the_mailer_runs(jobs_recorder: JobRecorder, shop_ctx: ShopContext) -> None:
    place_order(8, "bob@example.com", 100)
    perform_enqueued_jobs(only=SendReceipt)
    assert shop_ctx.done == {"receipts": 1}
    assert_not_enqueued(SendReceipt)
    assert_enqueued(BookRevenue, count=1)
