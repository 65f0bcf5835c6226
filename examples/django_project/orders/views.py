"""POST /orders/ (item, quantity): save the order and enqueue its receipt in one
transaction. If anything in the block fails, neither the order nor the job exists."""

from django.db import transaction
from django.http import JsonResponse

from .models import Order
from .tasks import send_receipt


def place_order(request):
    try:
        with transaction.atomic():
            order = Order.objects.create(item=request.POST["item"],
                                         quantity=int(request.POST["quantity"]))
            result = send_receipt.enqueue(order.id)   # a pgqueue job, same transaction
            if order.quantity < 1:
                raise ValueError("quantity must be at least 1")
    except ValueError as e:
        return JsonResponse({"error": str(e)}, status=400)
    return JsonResponse({"order": order.id, "task_result": result.id})
