"""Test setup for the example shop: point the unified_jobs pytest plugin at the shop's app.

The plugin (installed with unified-jobs) provides ``jobs_override`` and ``jobs_recorder``;
both act on the app the ``unified_jobs_app`` fixture returns, here the shop's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the `shop` package

from shop.app import create_app
from shop.context import ShopContext

from unified_jobs import Jobs


@pytest.fixture
def shop_ctx() -> ShopContext:
    return ShopContext()


@pytest.fixture
def unified_jobs_app(shop_ctx: ShopContext) -> Jobs:
    # The development config, as the demo runs it (BackgroundAsync unless SHOP_WORKERS_MODE
    # says otherwise); the fixtures switch its mode for each test and restore it after.
    return create_app(env="development", context=shop_ctx)
