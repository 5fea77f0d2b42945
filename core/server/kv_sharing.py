"""Elastic KV memory in the server (--kv-sharing elastic): the models under one memory budget draw KV pages
from what their weights leave of it (corral.server.kv_pages decides). Each engine reserves KV blocks for all
of that and starts with the minimum the memory planner counted for it, backed and nothing more
(`kv_grant_blocks`: the grant a joining model gets, which its join then matches); every few milliseconds the
engines' reports (SchedulerStats) go in and changed grants go out as SetKVGrant. A sleeping engine goes back
to that start grant, so it wakes with no more.

On a single-rank CUDA engine with cuda-python's bindings (the gpu extra), the grant is real memory, as in
kvcached: each layer's KV cache is a view over a virtual range reserved for all its blocks
(corral.engine.kv_memory), a larger grant maps physical pages before the engine's pool grows, and a smaller
one unmaps the pages past the highest block still held once the blocks on them are empty, so another
engine, or a loading model's weights, can take them; the kernels keep one base pointer per layer and the
CUDA graphs stay valid. The engine reports the pages it has mapped as its KV memory. On CPU, on several
ranks, or without the bindings, the KV tensors are allocated at the reserved size and a grant only limits
the blocks the scheduler may use: the budget is simulated.

A model that loads or wakes counts the others at their minimum: while it does, the pages' budget leaves out
its weights and the grant it starts with, the rebalances take the others' pages back (idle models first,
busy ones down to their share), and its engine starts once the pages held fit (`settled`), so its weights
and start grant find the memory free."""
import asyncio
import logging

from corral.engine.messages import SetKVGrant
from corral.server.kv_pages import PAGE_BYTES, KVPages
from corral.server.memory_planner import KiB
from corral.server.model_memory import engine_configs, kv_block_bytes, min_kv_blocks

logger = logging.getLogger(__name__)

SIMULATED_PAGE_BYTES = 64 * KiB  # on CPU nothing is mapped: pages small enough for tiny models to show it


class KVSharing:
    """The grants of the models under one ModelMemory."""

    interval = 0.02  # seconds between rebalances
    demand_hold = 2.0  # seconds a model's highest demand counts, and it stays busy (KVPages.hold_rounds)

    def __init__(self, memory, clients: dict, page_bytes: int):
        self.memory, self.clients = memory, clients
        self.pages = KVPages(0, page_bytes, hold_rounds=round(self.demand_hold / self.interval))
        self._engines: dict[str, object] = {}  # the engine each tenant's grants go to
        self._starts: dict[str, tuple[int, int]] = {}  # each model's block bytes and the grant its engine starts with
        self._stats_at_join: dict[str, object] = {}  # reports predating the start grant (EngineReady's) are not read
        self._task: asyncio.Task | None = None

    @classmethod
    def from_config(cls, config, memory, clients: dict) -> "KVSharing | None":
        if config.kv_sharing == "static":
            return None
        from corral.config import ConfigError
        if memory is None or memory.planner.budget_bytes is None:
            raise ConfigError("--kv-sharing elastic shares a memory budget between the models: give "
                              "--memory-budget (on CUDA, --max-loaded-models also derives it from "
                              "--gpu-memory-utilization)")
        from corral.server.placement import uses_cuda
        page_bytes = PAGE_BYTES if any(uses_cuda(s) for s in config.models) else SIMULATED_PAGE_BYTES
        return cls(memory, clients, page_bytes)

    def start(self):
        self._task = asyncio.create_task(self._run(), name="kv-sharing")

    def stop(self):
        if self._task is not None:
            self._task.cancel()

    def reserved_bytes(self, footprint) -> int:
        """The KV range an engine reserves: all of the budget its own weights and overhead leave."""
        return max(footprint.kv_cache_bytes,
                   self.memory.planner.budget_bytes - footprint.weights_bytes - footprint.overhead_bytes)

    def engine_settings(self, client, footprint) -> dict:
        """An engine's KV settings: the range it reserves (unless its own settings size its KV) and
        `kv_grant_blocks`, the grant a joining model gets, which is all it backs until its grants come."""
        spec = client.spec
        config, model_config = engine_configs(spec, client.model_dir, client.max_model_len)
        block_bytes = kv_block_bytes(config, model_config)
        settings = {}
        if spec.kv_cache_memory_bytes is None and spec.num_kv_blocks is None:
            settings["kv_cache_memory_bytes"] = self.reserved_bytes(footprint)
        reserve = settings.get("kv_cache_memory_bytes", spec.kv_cache_memory_bytes)
        reserved = spec.num_kv_blocks if spec.num_kv_blocks is not None else reserve // block_bytes  # as the engine
        minimum = min_kv_blocks(config.max_model_len, config.block_size)
        # the policy's own answer to a model that joins: its minimum, in whole pages
        grant = KVPages(0, self.pages.page_bytes).join(client.name, block_bytes, minimum, max(minimum, reserved))
        self._starts[client.name] = (block_bytes, grant)
        return dict(settings, kv_grant_blocks=grant)

    def describe(self, name: str) -> dict | None:
        """Its /v1/models entry's kv_cache: the blocks granted, held now and needed, its minimum and range."""
        tenant = self.pages.tenants.get(name)
        if tenant is None:
            return None
        return {"granted_blocks": self.pages.granted_blocks(name), "num_blocks": tenant.num_blocks,
                "needed_blocks": tenant.num_needed_blocks, "min_blocks": tenant.min_blocks,
                "max_blocks": tenant.max_blocks, "block_bytes": tenant.block_bytes}

    def _bytes_outside_pages(self, resident) -> int:
        """What a model holds of the budget beside the pages it has joined with: its weights and overhead,
        and while it loads or wakes, the start grant its engine backs before it joins."""
        if resident.asleep:
            return resident.device_bytes
        outside = resident.device_bytes - resident.footprint.kv_cache_bytes
        if resident.name in self.pages.tenants:
            return outside
        block_bytes, start_grant = self._starts.get(resident.name, (1, 0))
        start_bytes = max(resident.footprint.kv_cache_bytes, start_grant * block_bytes)
        return outside + -(-start_bytes // self.pages.page_bytes) * self.pages.page_bytes

    @property
    def settled(self) -> bool:
        """The pages the engines hold fit the budget: what a loading model counts on has been given back."""
        # the planner counts each minimum in bytes and a grant is whole pages: a page each of slack
        return self.pages.free_pages + len(self.pages.tenants) >= 0

    async def _run(self):
        while True:
            try:
                self.rebalance()
            except Exception:  # the grants stay as they are; serving goes on
                logger.exception("elastic KV: rebalance failed")
            await asyncio.sleep(self.interval)

    def rebalance(self):
        for client in self.clients.values():
            ready = (str(client.state) == "ready" and client.engine is not None and client.engine_ready is not None
                     and client.stats is not None)
            if not ready or self._engines.get(client.name, client.engine) is not client.engine:
                if client.name in self.pages.tenants:
                    self.pages.leave(client.name)  # asleep, unloaded or restarting: all its pages are free
                    del self._engines[client.name], self._stats_at_join[client.name]
            if not ready:
                continue
            stats = client.stats
            if client.name not in self.pages.tenants:  # it holds its start grant (at wake too: it slept back to it)
                ready_message = client.engine_ready
                block_bytes, start_grant = self._starts[client.name]
                min_blocks = min_kv_blocks(ready_message.max_model_len, ready_message.block_size)
                grant = self.pages.join(client.name, block_bytes, min_blocks, ready_message.num_kv_blocks,
                                        num_blocks=start_grant)
                self._engines[client.name] = client.engine
                self._stats_at_join[client.name] = stats
                client.engine.send(SetKVGrant(grant))
            if stats is not self._stats_at_join[client.name]:
                self.pages.report(client.name, stats.num_kv_blocks, stats.num_kv_blocks - stats.num_free_kv_blocks,
                                  stats.num_needed_kv_blocks)
        self.pages.set_budget(self.memory.planner.budget_bytes - sum(map(self._bytes_outside_pages,
                                                                         self.memory.residents())))
        for name, num_blocks in self.pages.rebalance().items():
            logger.debug("elastic KV: model %s may use %d blocks", name, num_blocks)
            self._engines[name].send(SetKVGrant(num_blocks))
