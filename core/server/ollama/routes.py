"""Ollama's routes on corral's app, and its error shape ({"error": "..."}) on /api/."""
import asyncio
import time

from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from corral.server.model_state import ModelState
from corral.server.errors import APIError
from corral.server.ollama import models, pull
from corral.server.ollama.embeddings import embed
from corral.server.ollama.names import find_served
from corral.server.ollama.protocol import (ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ModelRequest,
                                           NotSupportedError, keep_alive_seconds)
from corral.server.ollama.serving import chat, generate
from corral.version import version

# the Ollama release whose API this one answers like: clients that check the version before using
# tools, format schemas or think find them
OLLAMA_API_VERSION = "0.12.0"


def render_error(error: APIError) -> dict:
    return {"error": error.message}


def add_ollama_routes(app: FastAPI):
    app.state.error_shapes.add(("/api/",), render_error)
    registry = app.state.registry
    facts = models.ModelFactsCache()

    def served(request: Request, name: str):
        client = find_served(registry, name)
        request.state.model = client.name
        return client

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def root():
        return PlainTextResponse("Ollama is running")  # what Ollama's clients probe for

    @app.get("/api/version")
    async def version_():
        return {"version": OLLAMA_API_VERSION, "corral_version": version()}

    @app.get("/api/tags")
    async def tags():
        return {"models": await asyncio.to_thread(lambda: [models.tag(c, facts.get(c)) for c in registry])}

    @app.get("/api/ps")
    async def ps():
        loaded = [c for c in registry if c.state == ModelState.READY]
        return {"models": await asyncio.to_thread(
            lambda: [models.process(c, facts.get(c), registry.keep_alive(c)) for c in loaded])}

    @app.post("/api/show")
    async def show(body: ModelRequest, request: Request):
        client = served(request, body.target)
        return await asyncio.to_thread(lambda: models.show(client, facts.get(client)))

    @app.post("/api/chat")
    async def chat_(body: ChatRequest, request: Request):
        return await chat(body, served(request, body.model), request)

    @app.post("/api/generate")
    async def generate_(body: GenerateRequest, request: Request):
        return await generate(body, served(request, body.model), request)

    @app.post("/api/pull")
    async def pull_(body: ModelRequest):
        return await pull.pull(body.target, body.stream, registry)

    @app.delete("/api/delete")
    async def delete(body: ModelRequest):
        return await asyncio.to_thread(pull.delete, body.target, registry)

    @app.post("/api/embed")
    async def embed_(body: EmbedRequest, request: Request):
        started, client = time.perf_counter_ns(), served(request, body.model)
        texts = [body.input] if isinstance(body.input, str) else body.input
        registry.set_keep_alive(client, keep_alive_seconds(body.keep_alive, client.spec.keep_alive))
        vectors, num_tokens = await embed(client, body.model, texts, body.truncate, body.dimensions)
        return {"model": body.model, "embeddings": vectors, "total_duration": time.perf_counter_ns() - started,
                "load_duration": 0, "prompt_eval_count": num_tokens}

    @app.post("/api/embeddings")
    async def embeddings(body: EmbeddingsRequest, request: Request):
        client = served(request, body.model)
        registry.set_keep_alive(client, keep_alive_seconds(body.keep_alive, client.spec.keep_alive))
        (vector,), _ = await embed(client, body.model, [body.prompt], True, None)
        return {"embedding": vector}

    async def not_supported(request: Request):
        raise NotSupportedError(f"{request.url.path} is not supported: corral serves models from its store and hubs "
                                "(/api/pull, corral pull), without Modelfiles")

    for action in ("create", "copy", "push"):
        app.add_api_route(f"/api/{action}", not_supported, methods=["POST"], include_in_schema=False)
