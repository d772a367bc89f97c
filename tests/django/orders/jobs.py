"""A unified_jobs Worker beside the Django tasks: found here without being registered by hand."""

from pydantic import BaseModel

from tests.django.orders.tasks import record
from unified_jobs import Worker


class RestockArgs(BaseModel):
    item: str


class RestockWorker(Worker[RestockArgs]):
    def perform(self, args: RestockArgs) -> None:
        record(task="restock", item=args.item)
