"""Django tasks: plain Django, nothing of unified_jobs in them."""

try:
    from django.tasks import task  # Django 6
except ImportError:  # Django 4.2-5.2: the django-tasks backport
    from django_tasks import task

from orders.models import Order


@task(queue_name="mail", priority=10)
def send_receipt(order_id: int) -> dict:
    order = Order.objects.get(id=order_id)
    # ... email order.email here ...
    Order.objects.filter(id=order_id).update(receipt_sent=True)
    return {"order": order_id, "to": order.email}


@task()
async def score_fraud(order_id: int) -> float:
    order = await Order.objects.aget(id=order_id)
    score = round(len(order.item) / 100, 2)
    await Order.objects.filter(id=order_id).aupdate(fraud_score=score)
    return score
