"""The Anthropic Messages API on corral's app: its routes and its error shape."""
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from corral.server.anthropic.errors import render_error
from corral.server.anthropic.protocol import CountTokensRequest, MessagesRequest
from corral.server.anthropic.serving import count_tokens, create_message


def add_anthropic_routes(app: FastAPI):
    """POST /v1/messages and /v1/messages/count_tokens. The key comes as x-api-key or a bearer token (auth.py);
    the anthropic-version and anthropic-beta headers are accepted and not read."""
    app.state.error_shapes.add(("/v1/messages",), render_error)

    def model_for(request: Request, name: str):
        client = request.app.state.registry.get(name)
        request.state.model = client.name
        return client

    @app.post("/v1/messages")
    async def messages(body: MessagesRequest, request: Request):
        result = await create_message(body, model_for(request, body.model), request,
                                      request.app.state.config.request_load_timeout)
        return JSONResponse(result) if isinstance(result, dict) else result

    @app.post("/v1/messages/count_tokens")
    async def messages_count_tokens(body: CountTokensRequest, request: Request):
        return await count_tokens(body, model_for(request, body.model), request,
                                  request.app.state.config.request_load_timeout)
