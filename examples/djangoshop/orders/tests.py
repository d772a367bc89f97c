"""Tests with Django's own runner (``manage.py test``): the jobs run inline, in the test
(ForegroundBlocking), switched on with ``override_settings``."""

from django.test import TestCase, override_settings

from orders.models import Order
from orders.tasks import send_receipt
from unified_jobs.django import compat

INLINE = {"workers": {"mode": "ForegroundBlocking"}}


@override_settings(UNIFIED_JOBS=INLINE)
class PlaceOrderTests(TestCase):
    def place(self, **body):
        # A TestCase runs in a transaction that never commits, so on-commit jobs wait for
        # captureOnCommitCallbacks(execute=True) to run them (inline, in this mode).
        with self.captureOnCommitCallbacks(execute=True):
            return self.client.post(
                "/orders",
                {"item": "kettle", "email": "ada@example.com", **body},
                content_type="application/json",
            )

    def test_an_order_gets_its_receipt(self):
        response = self.place()
        self.assertEqual(response.status_code, 201)
        order = Order.objects.get()
        self.assertTrue(order.receipt_sent)
        self.assertEqual(order.fraud_score, 0.06)  # the async task ran too
        result = send_receipt.get_result(response.json()["task"])
        self.assertEqual(result.status, compat.TaskResultStatus.SUCCESSFUL)
        self.assertEqual(result.return_value, {"order": order.id, "to": "ada@example.com"})

    def test_a_cancelled_order_sends_nothing(self):
        response = self.place(cancel=True)
        self.assertEqual(response.status_code, 409)
        self.assertFalse(Order.objects.exists())
        with self.assertRaises(compat.TaskResultDoesNotExist):
            send_receipt.get_result(response.json()["task"])
