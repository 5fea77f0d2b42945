"""The FastAPI app: OpenAI routes, /tokenize, /detokenize, /health, /metrics; auth, limits and error bodies."""
import importlib.metadata
import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from corral.engine.input_processor import PromptError
from corral.engine.tokenizer import ChatTemplateError
from corral.server.anthropic.routes import add_anthropic_routes
from corral.server.auth import APIKeyMiddleware, APIKeys
from corral.server.config import ServerConfig
from corral.server.engine_client import EngineClient
from corral.server.error_shapes import ErrorShapes
from corral.server.errors import APIError, BadRequestError, InternalServerError, NotFoundError, validation_error
from corral.server.heap import freeze, unfreeze
from corral.server.limits import RequestSizeLimitMiddleware, Tokenization
from corral.server.model_routes import add_model_routes
from corral.server.metrics import Metrics
from corral.server.model_registry import ModelRegistry
from corral.server.ollama.routes import add_ollama_routes
from corral.server.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest
from corral.server.responses.routes import add_responses_routes
from corral.server.serving_chat import create_chat_completion, render_prompt
from corral.server.serving_completion import create_completion
from corral.server.serving_embedding import add_embeddings_routes

logger = logging.getLogger(__name__)


def tokenize_request(client, body: TokenizeRequest, tokenization: Tokenization, trust_template: bool) -> dict:
    chat = body.chat()
    if chat is None:
        ids = tokenization.encode(client, body.prompt, "prompt", body.add_special_tokens is not False)
    else:
        prompt, ids, _ = render_prompt(client, chat, chat.template_kwargs(trust_template), tokenization)
        if body.add_special_tokens:
            ids = tokenization.encode(client, prompt, "messages", add_special_tokens=True)
    result = {"count": len(ids), "max_model_len": client.max_model_len, "tokens": ids}
    if body.return_token_strs:
        result["token_strs"] = client.tokenizer.convert_ids_to_tokens(ids)
    return result


def detokenize_request(client, body: DetokenizeRequest) -> dict:
    try:
        client.input_processor.check_token_ids(body.tokens)
    except PromptError as e:
        raise BadRequestError(str(e), param="tokens") from None
    return {"prompt": client.tokenizer.decode(body.tokens)}


def create_app(config: ServerConfig, plugin_manager=None, engine_client: type[EngineClient] = EngineClient) -> FastAPI:
    """`engine_client`: how the app reaches each model's engine (an engine process of its own by default)."""
    metrics = Metrics()
    registry = ModelRegistry(config, metrics, plugin_manager, engine_client)
    metrics.watch(registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await registry.start()
        freeze()
        yield
        logger.info("shutting down: stopping %d engine(s)", len(registry.clients))
        await registry.shutdown(timeout=10.0)
        unfreeze()

    docs = {} if config.enable_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="corral", summary="Several LLMs behind one OpenAI-compatible API", lifespan=lifespan, **docs)
    app.state.registry, app.state.metrics, app.state.config = registry, metrics, config
    app.state.tokenization = tokenization = Tokenization()
    app.state.error_shapes = ErrorShapes()
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(RequestSizeLimitMiddleware, max_bytes=config.max_request_bytes)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if (keys := APIKeys.from_config(config)) is not None:
        app.add_middleware(APIKeyMiddleware, keys=keys)
    app.add_middleware(ArrivalMiddleware)  # the outermost of ours: the earliest stamp
    _add_error_handlers(app)

    def model_for(request: Request, name: str | None):
        client = registry.get(name)
        request.state.model = client.name
        return client

    @app.get("/health")
    async def health():
        status, body = registry.health()
        return JSONResponse(body, status_code=status)

    @app.get("/version")
    async def version():
        return {"version": _version()}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [registry.describe(c) for c in registry]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str):
        return registry.describe(registry.get(name))

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        result = await create_chat_completion(body, model_for(request, body.model), request,
                                              config.request_load_timeout)
        return JSONResponse(result) if isinstance(result, dict) else result

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        result = await create_completion(body, model_for(request, body.model), request, config.request_load_timeout)
        return JSONResponse(result) if isinstance(result, dict) else result

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request):
        client = model_for(request, body.model)
        await client.wait_ready(config.request_load_timeout)
        return await tokenization.run(tokenize_request, client, body, tokenization, config.trust_request_chat_template)

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request):
        client = model_for(request, body.model)
        await client.wait_ready(config.request_load_timeout)
        return await tokenization.run(detokenize_request, client, body)

    add_anthropic_routes(app)
    add_responses_routes(app, config.max_stored_responses)
    add_ollama_routes(app)
    add_embeddings_routes(app)
    add_model_routes(app)
    return app


def _version() -> str:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _add_error_handlers(app: FastAPI):
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return error_response(request.app, request.url.path, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        return error_response(request.app, request.url.path, validation_error(list(exc.errors())))

    @app.exception_handler(ChatTemplateError)
    async def chat_template_error(request: Request, exc: ChatTemplateError):
        return error_response(request.app, request.url.path, BadRequestError(str(exc), param="messages"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        error = NotFoundError(str(exc.detail)) if exc.status_code == 404 else BadRequestError(str(exc.detail))
        error.status_code = exc.status_code
        return error_response(request.app, request.url.path, error)


def error_response(app, path: str, error: APIError) -> JSONResponse:
    """`error` in the shape of the dialect that serves `path`, with its HTTP status."""
    return JSONResponse(app.state.error_shapes.body(path, error), status_code=int(error.status_code))



class ArrivalMiddleware:
    """Stamps each HTTP request with when the server received it (`request.state.arrival_time`, on
    time.monotonic(), the clock the engine's step log reads): a request's latencies and its time to the engine
    count from there, the API process's own work included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            scope.setdefault("state", {})["arrival_time"] = time.monotonic()
        await self.app(scope, receive, send)


class CatchAllMiddleware:
    """Any other exception: logged with its traceback, answered with a bare 500. Swallowed here, so the
    connection stays usable (Starlette's own handler would re-raise it and uvicorn drop the connection)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            logger.exception("unhandled error on %s %s", scope["method"], scope["path"])
            if started:
                raise
            error = InternalServerError("internal server error; see the server log")
            await error_response(scope["app"], scope["path"], error)(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts HTTP requests by model (set by the route in request.state), endpoint and status."""

    ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/tokenize", "/detokenize", "/v1/messages",
                 "/v1/responses", "/v1/embeddings", "/api/chat", "/api/generate")

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] not in self.ENDPOINTS:
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            model = scope.get("state", {}).get("model", "")
            self.metrics.http_requests.labels(model, scope["path"], str(status[0])).inc()
