from collections import deque

from corral.engine.request import Request


class FCFSQueue(deque):
    """Waiting requests in arrival order; preempted requests go back to the front."""

    def add(self, request: Request):
        self.append(request)

    def prepend(self, request: Request):
        self.appendleft(request)

    def peek(self) -> Request:
        return self[0]

    def pop_request(self) -> Request:
        return self.popleft()
