"""The served models by name and alias, their states, and the idle unloading of keep_alive."""
import asyncio
import dataclasses
import logging
import os
import threading
import time

from corral.server.config import ServerConfig
from corral.server.engine_client import EngineClient
from corral.server.engine_spares import EngineSpares
from corral.server.model_state import ModelState
from corral.server.errors import ModelNotFoundError, is_local_path
from corral.server.kv_sharing import KVSharing
from corral.server.model_memory import ModelMemory, memory_held

logger = logging.getLogger(__name__)


class ModelRegistry:
    def __init__(self, config: ServerConfig, metrics=None, plugin_manager=None,
                 engine_client: type[EngineClient] = EngineClient):
        self.config = config
        threads = max(1, (os.cpu_count() or 1) // len(config.models))  # CPU engines share the cores
        level = logging.getLogger("corral").getEffectiveLevel()
        lock = threading.Lock()
        self.clients: dict[str, EngineClient] = {
            spec.name: engine_client(spec, metrics, plugin_manager, num_threads=threads, log_level=level,
                                    files_lock=lock) for spec in config.models}
        self.names: dict[str, str] = {}
        for spec in config.models:
            self.names[spec.name] = spec.name
            for alias in spec.aliases:
                self.names.setdefault(alias, spec.name)
        self.created = int(time.time())
        self._keep_alive: dict[str, float | None] = {}  # set by requests (Ollama's keep_alive), by model
        self._watchdog: asyncio.Task | None = None
        self.memory = ModelMemory.from_config(config, self.clients)  # None: no budget, nothing evicted
        # models load on demand: each load takes an engine process started ahead
        self.spares = EngineSpares() if self.memory is not None else None
        if self.memory is not None:
            for client in self:
                client.make_room = self.memory.make_room
                client.spares = self.spares
        self.kv_sharing = KVSharing.from_config(config, self.memory, self.clients)  # None: static KV shares
        if self.kv_sharing is not None:
            self.memory.kv_sharing = self.kv_sharing

    def __iter__(self):
        return iter(self.clients.values())

    def get(self, name: str | None) -> EngineClient:
        """The model a request names (or the first one when it names none); 404 listing the served ones."""
        if name is None:
            return next(iter(self.clients.values()))
        canonical = self.names.get(name)
        if canonical is None:
            raise ModelNotFoundError(f"The model `{name}` does not exist. Served models: "
                                     f"{', '.join(self.clients)}", param="model")
        return self.clients[canonical]

    async def start(self):
        if self.kv_sharing is not None:
            self.kv_sharing.start()
        if self.spares is not None:
            self.spares.refill()
        for client in self:
            if client.spec.preload:
                if self.memory is not None:
                    self.memory.preloading.add(client.name)
                client.load()
        if any(c.spec.keep_alive is not None for c in self):
            self._watchdog = asyncio.create_task(self._unload_idle(), name="keep-alive")

    def keep_alive(self, client: EngineClient) -> float | None:
        """Seconds `client` may stay idle before it unloads (None: never): as the last request that said
        so asked, else as configured."""
        return self._keep_alive.get(client.name, client.spec.keep_alive)

    def set_keep_alive(self, client: EngineClient, seconds: float | None):
        self._keep_alive[client.name] = seconds
        if seconds is not None and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._unload_idle(), name="keep-alive")

    async def shutdown(self, timeout: float):
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.kv_sharing is not None:
            self.kv_sharing.stop()
        await asyncio.gather(*(c.shutdown(timeout) for c in self), return_exceptions=True)
        if self.spares is not None:
            await asyncio.to_thread(self.spares.close)

    async def _unload_idle(self):
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for client in self:
                keep_alive = self.keep_alive(client)
                if (keep_alive is not None and client.state == ModelState.READY and not client.num_pending
                        and now - client.last_used >= keep_alive):
                    await (client.unload() if self.memory is None else self.memory.unload(client))

    @property
    def starting(self) -> bool:
        """Some preloaded model has not finished its first load."""
        return any(c.spec.preload and not c.settled_once and c.state != ModelState.UNLOADED for c in self)

    def describe(self, client: EngineClient) -> dict:
        """A /v1/models entry."""
        entry = {"id": client.name, "object": "model", "created": self.created, "owned_by": "corral",
                 "root": client.name if is_local_path(client.spec.model) else client.spec.model, "parent": None, "aliases": list(client.spec.aliases),
                 "state": client.state, "max_model_len": client.max_model_len,
                 "memory_bytes": memory_held(client, self.memory)}
        if client.engine_ready is not None:  # what its engine's last start took, part by part
            entry["startup_seconds"] = {name: round(seconds, 3) for name, seconds
                                        in dataclasses.asdict(client.engine_ready.startup).items()}
        if self.kv_sharing is not None:
            entry["kv_cache"] = self.kv_sharing.describe(client.name)
        if client.state == ModelState.ERROR:
            entry["error"] = client.error
        progress = client.progress
        if progress is not None and client.state in (ModelState.DOWNLOADING, ModelState.RESOLVING):
            entry["state"] = progress.state if progress.state in ("resolving", "downloading") else client.state
            entry["progress"] = progress.fraction
        return entry

    def health(self) -> tuple[int, dict]:
        """200 whenever the server can serve: no model in its first load, and some model ready or able
        to load on demand (unloaded by keep_alive, lazy, restarting after one engine death); else 503.
        Status "degraded" while some model is failing (could not load, or its engine keeps dying).
        Open without a key, so states and counts only: no pids, no error text."""
        models = {c.name: {"state": c.state, "failing": c.failing, "crashes": c.crashes, "restarts": c.restarts,
                           "pending": c.num_pending, "memory_bytes": memory_held(c, self.memory),
                           **(dataclasses.asdict(c.stats) if c.stats else {})}
                  for c in self}
        serving = any(c.state == ModelState.READY or not c.failing for c in self)
        if self.starting or not serving:
            return 503, {"status": "loading" if self.starting else "unavailable", "models": models}
        return 200, {"status": "degraded" if any(c.failing for c in self) else "ok", "models": models}

    def fail_in_flight(self, message: str):
        """End every running request of every model with a 503 saying `message`."""
        for client in self:
            client.fail_in_flight(message)
