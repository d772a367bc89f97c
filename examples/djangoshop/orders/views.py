import json

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from orders.jobs import Restock
from orders.models import Order
from orders.tasks import score_fraud, send_receipt
from unified_jobs.django import DjangoTransaction


class OrderCancelled(Exception):
    pass


@csrf_exempt
@require_POST
def place_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    try:
        with transaction.atomic():
            order = Order.objects.create(item=body["item"], email=body["email"])
            # Enqueued with the order: the job exists if and only if this block commits.
            receipt = send_receipt.enqueue(order.id)
            score_fraud.enqueue(order.id)
            # A Worker of unified_jobs waits for the same commit when told which transaction.
            Restock.perform_later({"item": order.item}, transaction=DjangoTransaction())
            if body.get("cancel"):
                raise OrderCancelled
    except OrderCancelled:
        return JsonResponse({"cancelled": True, "task": receipt.id}, status=409)
    return JsonResponse({"order": order.id, "task": receipt.id}, status=201)


@require_GET
def receipt(request: HttpRequest, order_id: int, task_id: str) -> JsonResponse:
    result = send_receipt.get_result(task_id)
    body = {"order": order_id, "status": str(result.status)}
    if result.is_finished and not result.errors:
        body["receipt"] = result.return_value
    return JsonResponse(body)
