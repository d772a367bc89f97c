"""The shop's web app (Starlette): placing an order enqueues its jobs.

Run it with its workers in one process:

    cd examples && unified-jobs --app shop.web:jobs start --server-and-worker --server shop.web:app

The jobs' dashboard is mounted at /jobs/ (http://127.0.0.1:5150/jobs/): in the in-process
modes it shows this process' own jobs.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from shop.app import create_app
from shop.context import ShopContext
from shop.workers import BookRevenue, MakeThumbnails, SendReceipt
from unified_jobs.dashboard import create_app as create_dashboard

context = ShopContext()
jobs = create_app(context=context)


async def place_order(request: Request) -> JSONResponse:
    order = await request.json()
    handles = [
        await SendReceipt.aperform_later({"order_id": order["id"], "email": order["email"]}),
        await MakeThumbnails.aperform_later(
            {"image_url": order.get("image", f"https://img.example.com/{order['id']}.png")}
        ),
        await BookRevenue.aperform_later(
            {"order_id": order["id"], "subtotal_cents": order["subtotal_cents"]}
        ),
    ]
    return JSONResponse({"jobs": [h.id for h in handles]}, status_code=202)


async def stats(request: Request) -> JSONResponse:
    return JSONResponse({"done": dict(context.done), "revenue_cents": context.revenue_cents})


app = Starlette(
    routes=[
        Route("/orders", place_order, methods=["POST"]),
        Route("/stats", stats),
        Mount("/jobs", create_dashboard(jobs)),
    ]
)
