"""Tests with pytest-django and unified_jobs' testing toolkit: the jobs are recorded, checked,
then run as a worker would run them."""

import pytest
from orders.jobs import Restock
from orders.models import Order
from orders.tasks import send_receipt

from unified_jobs.django import worker_of
from unified_jobs.testing import assert_enqueued, enqueued_jobs, perform_enqueued_jobs

pytestmark = pytest.mark.django_db


def place(client, **body):
    return client.post(
        "/orders", {"item": "teapot", "email": "grace@example.com", **body}, content_type="application/json"
    )


def test_an_order_enqueues_its_receipt(client, jobs_recorder, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = place(client)
    order = Order.objects.get()
    assert_enqueued(worker_of(send_receipt), args={"args": [order.id], "kwargs": {}})
    assert_enqueued(Restock, args={"item": "teapot", "quantity": 1})
    assert not order.receipt_sent  # recorded, not run yet

    perform_enqueued_jobs()
    order.refresh_from_db()
    assert order.receipt_sent
    assert send_receipt.get_result(response.json()["task"]).return_value == {
        "order": order.id,
        "to": "grace@example.com",
    }


def test_a_cancelled_order_enqueues_nothing(client, jobs_recorder, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = place(client, cancel=True)
    assert response.status_code == 409
    assert enqueued_jobs() == []
