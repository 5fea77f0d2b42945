"""A served model's memory by hand: POST /v1/models/{model}/load, /unload, /sleep and /wake, each answered
with the model's /v1/models entry (its state and the memory it holds). Unload and sleep let the model's
requests in flight finish first, or answer 409 at once with ?wait=false; an unknown model gets 404."""
import asyncio
import time

from fastapi import FastAPI

from corral.server.engine_client import EngineClient
from corral.server.model_state import ModelState
from corral.server.errors import ConflictError

POLL_INTERVAL = 0.05


def add_model_routes(app: FastAPI):
    registry, config = app.state.registry, app.state.config

    @app.post("/v1/models/{name:path}/load")
    async def load_model(name: str):
        client = registry.get(name)
        await client.wait_ready(config.request_load_timeout)
        return registry.describe(client)

    @app.post("/v1/models/{name:path}/wake")
    async def wake_model(name: str):
        client = registry.get(name)
        await client.wait_ready(config.request_load_timeout)  # wakes a sleeping model, loads an unloaded one
        return registry.describe(client)

    @app.post("/v1/models/{name:path}/unload")
    async def unload_model(name: str, wait: bool = True):
        client = registry.get(name)
        deadline = time.monotonic() + config.request_load_timeout
        while client.state in (ModelState.READY, ModelState.SLEEPING):
            await _until_idle(client, wait, deadline)
            await (client.unload() if registry.memory is None else registry.memory.unload(client))
        return registry.describe(client)

    @app.post("/v1/models/{name:path}/sleep")
    async def sleep_model(name: str, wait: bool = True):
        client = registry.get(name)
        if client.spec.tensor_parallel_size > 1:
            raise ConflictError(f"model {client.name} cannot sleep: sleep is for models on one device "
                                f"(its tensor_parallel_size is {client.spec.tensor_parallel_size})", param="model")
        if client.state not in (ModelState.READY, ModelState.SLEEPING):
            raise ConflictError(f"model {client.name} is {client.state}; only a ready model can sleep", param="model")
        if client.state == ModelState.READY and registry.memory is not None:
            if (refused := registry.memory.sleep_refused(client)) is not None:
                raise ConflictError(refused, param="model")
        deadline = time.monotonic() + config.request_load_timeout
        while client.state == ModelState.READY:
            await _until_idle(client, wait, deadline)
            if not await client.sleep() and client.state == ModelState.READY and not client.num_pending:
                raise ConflictError(f"model {client.name} could not sleep; the server log says why", param="model")
        return registry.describe(client)


async def _until_idle(client: EngineClient, wait: bool, deadline: float):
    """Return once `client` has no request in flight; 409 at once unless `wait`, or at the deadline."""
    while client.num_pending:
        if not wait or time.monotonic() > deadline:
            raise ConflictError(f"model {client.name} has {client.num_pending} request(s) in flight"
                                + ("; leave out wait=false to let them finish first" if not wait else ""),
                                param="model")
        await asyncio.sleep(POLL_INTERVAL)
