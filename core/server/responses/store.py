"""Stored responses: what GET /v1/responses/{id} returns and previous_response_id continues from."""
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(slots=True)
class StoredResponse:
    response: dict       # the response object as it was returned
    context: list[dict]  # the input items the model saw, earlier turns included (instructions are not carried)
    owner: str | None    # the id of the API key it was created under; None on a server without keys

    def conversation(self) -> list[dict]:
        """The items a response that continues this one starts from."""
        return self.context + self.response["output"]


class ResponseStore:
    """The newest `capacity` responses in memory, least recently used dropped first. A response is only
    seen under the API key that created it: for any other key it does not exist."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._responses: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._responses)

    def put(self, stored: StoredResponse):
        if self.capacity <= 0:
            return
        self._responses[stored.response["id"]] = stored
        self._responses.move_to_end(stored.response["id"])
        while len(self._responses) > self.capacity:
            self._responses.popitem(last=False)

    def get(self, response_id: str, owner: str | None) -> StoredResponse | None:
        stored = self._responses.get(response_id)
        if stored is None or stored.owner != owner:
            return None
        self._responses.move_to_end(response_id)
        return stored

    def delete(self, response_id: str, owner: str | None) -> bool:
        if self.get(response_id, owner) is None:
            return False
        del self._responses[response_id]
        return True
