"""Django tasks of the test project: each writes a line to $UJ_DJANGO_RECORDS (when set)."""

import json
import os

from unified_jobs.django.compat import task


def record(**fields):
    path = os.environ.get("UJ_DJANGO_RECORDS")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(fields) + "\n")


class PaymentDeclined(Exception):
    pass


@task()
def add(x, y):
    record(task="add", value=x + y)
    return x + y


@task(queue_name="mail", priority=50)
def send_receipt(order_id):
    from tests.django.orders.models import Order

    Order.objects.filter(id=order_id).update(receipt_sent=True)
    record(task="send_receipt", order=order_id)
    return {"order": order_id, "sent": True}


@task(takes_context=True)
def attempt_of(context, label):
    record(task="attempt_of", label=label, attempt=context.attempt, id=context.task_result.id)
    return context.attempt


@task()
async def async_double(x):
    record(task="async_double", value=x * 2)
    return x * 2


@task()
def decline(order_id):
    record(task="decline", order=order_id)
    raise PaymentDeclined(f"order {order_id} declined")
