"""A django.tasks task; `manage.py pgqueue_worker` imports this module and runs it."""

try:
    from django.tasks import task
except ImportError:  # Django < 6.0
    from django_tasks import task

from .models import Order


@task()
def send_receipt(order_id: int) -> str:
    order = Order.objects.get(id=order_id)
    # ... send the e-mail here ...
    Order.objects.filter(id=order_id).update(receipt_sent=True)
    return f"receipt sent for {order.quantity} x {order.item}"
