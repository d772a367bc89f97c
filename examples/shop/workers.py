"""The shop's workers: one sync, one async, one that uses the shared context."""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, Field

from shop.context import ShopContext
from unified_jobs import Worker


class ReceiptArgs(BaseModel):
    order_id: int
    email: str = Field(pattern=r".+@.+")


class SendReceipt(Worker[ReceiptArgs]):
    """Sync worker: renders and 'sends' a receipt."""

    queue = "mailers"
    tags = ("email",)

    def perform(self, args: ReceiptArgs) -> None:
        body = f"Thanks for order #{args.order_id}"
        assert body and args.email
        ctx: ShopContext = self.ctx
        ctx.record("receipts")


class ThumbnailArgs(BaseModel):
    image_url: str
    sizes: list[int] = [64, 256]


class MakeThumbnails(Worker[ThumbnailArgs]):
    """Async worker: awaits I/O (simulated) for each size."""

    queue = "media"

    async def perform(self, args: ThumbnailArgs) -> None:
        for _ in args.sizes:
            await asyncio.sleep(0)  # a real app would await an HTTP fetch or an upload here
        ctx: ShopContext = self.ctx
        ctx.record("thumbnails")


class OrderTotalArgs(BaseModel):
    order_id: int
    subtotal_cents: int = Field(ge=0)


class BookRevenue(Worker[OrderTotalArgs]):
    """Uses the context's tax rate and books the revenue into it."""

    def perform(self, args: OrderTotalArgs) -> None:
        ctx: ShopContext = self.ctx
        total = round(args.subtotal_cents * (1 + ctx.tax_rate))
        ctx.record("revenue", total)


__all__ = ["BookRevenue", "MakeThumbnails", "SendReceipt"]
