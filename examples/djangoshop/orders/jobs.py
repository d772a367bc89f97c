"""A unified_jobs Worker in the same project: found here by unified_jobs.django, no registering."""

from pydantic import BaseModel

from unified_jobs import Retry, Worker


class RestockArgs(BaseModel):
    item: str
    quantity: int = 1


class Restock(Worker[RestockArgs]):
    retry = Retry(max_attempts=3)

    def perform(self, args: RestockArgs) -> None:
        # ... order more stock from the supplier ...
        return None
