import json

from django.db import transaction
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt

from tests.django.orders.models import Order
from tests.django.orders.tasks import send_receipt


@csrf_exempt
def create_order(request):
    body = json.loads(request.body or b"{}")
    with transaction.atomic():
        order = Order.objects.create(item=body.get("item", "book"))
        result = send_receipt.enqueue(order.id)
        if body.get("fail"):
            transaction.set_rollback(True)
    return JsonResponse({"order": order.id, "task": result.id, "status": str(result.status)})
