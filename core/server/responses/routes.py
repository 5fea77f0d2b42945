"""The Responses API's routes, added to the app with one call; the store of responses belongs to the app."""
from typing import Literal

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from corral.server.errors import BadRequestError, NotFoundError
from corral.server.responses.protocol import ResponsesRequest
from corral.server.responses.serving import create_response, owner_of
from corral.server.responses.store import ResponseStore, StoredResponse


def add_responses_routes(app: FastAPI, max_stored_responses: int):
    store = ResponseStore(max_stored_responses)

    def stored(request: Request, response_id: str) -> StoredResponse:
        found = store.get(response_id, owner_of(request))
        if found is None:
            raise NotFoundError(f"No response found with id {response_id!r}.", param="response_id")
        return found

    @app.post("/v1/responses")
    async def responses(body: ResponsesRequest, request: Request):
        result = await create_response(body, request, store)
        return JSONResponse(result) if isinstance(result, dict) else result

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request):
        return stored(request, response_id).response

    @app.delete("/v1/responses/{response_id}")
    async def delete_response(response_id: str, request: Request):
        stored(request, response_id)
        store.delete(response_id, owner_of(request))
        return {"id": response_id, "object": "response", "deleted": True}

    @app.get("/v1/responses/{response_id}/input_items")
    async def input_items(response_id: str, request: Request, limit: int = Query(20, ge=1, le=100),
                          order: Literal["asc", "desc"] = "desc", after: str | None = None):
        items = stored(request, response_id).context
        items = items[::-1] if order == "desc" else items
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise BadRequestError(f"after: no input item {after!r} in this response", param="after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return {"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit}
