"""The shop's ``Jobs`` app: config from ``config/<env>.yaml``, workers registered once."""

from __future__ import annotations

from pathlib import Path

from shop.context import ShopContext
from shop.workers import BookRevenue, MakeThumbnails, SendReceipt
from unified_jobs import Jobs

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"


def create_app(env: str | None = None, context: ShopContext | None = None) -> Jobs:
    jobs = Jobs.from_config(env=env, config_dir=CONFIG_DIR, context=context or ShopContext())
    for worker in (SendReceipt, MakeThumbnails, BookRevenue):
        jobs.register(worker)
    return jobs
