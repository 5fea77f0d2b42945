"""The served models' device memory as the registry sees it: each model's footprint (estimated from its
files and settings before its first load, then as its engine reports it), the memory each holds in each
state, and making room for a model before its engine starts or wakes (corral.server.memory_planner
decides; the idle models it names are put to sleep or unloaded here)."""
import asyncio
import json
import logging
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

from corral.server.memory_planner import (MiB, Footprint, MemoryPlanner, NoRoomNow, Resident, format_bytes,
                                          kv_cache_bytes)

logger = logging.getLogger(__name__)

CUDA_ENGINE_OVERHEAD = 512 * MiB  # an engine process's CUDA context and allocator slack, awake or asleep
AWAKE = ("ready", "loading", "restarting")


class ModelMemory:
    """One budget for the models that share a device: `make_room(client)` runs before a model's engine
    starts; the least recently used idle models give way, and a model that can never fit fails in one line."""

    poll_interval = 0.05

    def __init__(self, planner: MemoryPlanner, clients: dict, load_timeout: float, sleep: bool = True):
        """`sleep`: evict idle models by putting them to sleep first (else by unloading them)."""
        self.planner = planner
        self.sleep = sleep
        self.clients = clients
        self.load_timeout = load_timeout
        self.evictions = 0
        self.preloading: set[str] = set()   # these load only if they fit without evicting anything
        self.granted: set[str] = set()     # loading models that were given their room
        self.kv_sharing = None             # a KVSharing: KV beyond each model's minimum is lent page by page
        self._estimates: dict[str, Footprint] = {}
        self._lock = asyncio.Lock()

    @classmethod
    def from_config(cls, config, clients: dict) -> "ModelMemory | None":
        """None unless the server has a memory budget or a cap on loaded models; on CUDA without
        --memory-budget, the budget is gpu_memory_utilization of the device."""
        budget = config.memory_budget_bytes
        if budget is None and config.max_loaded_models is None:
            return None
        if budget is None:
            from corral.server.placement import uses_cuda
            shares = [s.gpu_memory_utilization or 0.0 for s in config.models if uses_cuda(s)]
            if shares:
                budget = int(min(1.0, sum(shares)) * cuda_device_memory())
        host_budget = config.sleep_memory_bytes
        if host_budget is None and config.eviction == "sleep":
            host_budget = host_memory() // 2
        planner = MemoryPlanner(budget, config.max_loaded_models, host_budget)
        logger.info("models share %s%s; the least recently used idle ones make room%s",
                    f"a memory budget of {format_bytes(budget)}" if budget else "the device",
                    f", at most {config.max_loaded_models} loaded" if config.max_loaded_models else "",
                    f" (sleeping ones keep at most {format_bytes(host_budget)} of weights in host memory)"
                    if config.eviction == "sleep" else "")
        return cls(planner, clients, config.request_load_timeout, config.eviction == "sleep")

    # footprints

    def footprint(self, client) -> Footprint:
        """As its engine reported it, else estimated from its files and settings."""
        overhead = CUDA_ENGINE_OVERHEAD if _on_cuda(client.spec) else 0
        if client.name not in self._estimates and (self.kv_sharing is not None or client.engine_ready is None):
            self._estimates[client.name] = estimate_footprint(client.spec, client.model_dir, client.max_model_len,
                                                              overhead)
        if (reported := reported_footprint(client, overhead)) is not None:
            if self.kv_sharing is not None:  # its engine reserved more, but only its minimum is its own
                return Footprint(reported.weights_bytes, self._estimates[client.name].kv_cache_bytes,
                                 reported.overhead_bytes)
            return reported
        return self._estimates[client.name]

    def residents(self) -> list[Resident]:
        residents = []
        for client in self.clients.values():
            state = str(client.state)
            if state in ("loading", "restarting") and client.name not in self.granted:
                continue
            if state not in AWAKE and state != "sleeping":
                continue
            in_use = bool(client.num_pending) or state in ("loading", "restarting")
            residents.append(Resident(client.name, self.footprint(client), client.last_used, in_use,
                                      asleep=state == "sleeping",
                                      can_sleep=self.sleep and client.spec.tensor_parallel_size == 1))
        return residents

    # making room

    async def make_room(self, client) -> bool:
        """Wait until `client` fits, evicting idle models as the planner says. False when it gave up: a
        preload that does not fit beside the others, or no room within the load timeout and no request
        waiting any more (each had its 503 naming the models in use). Raises NeverFits."""
        self.granted.discard(client.name)
        footprint = self.footprint(client)
        if self.kv_sharing is not None:  # the elastic range, and the grant it starts with
            client.engine_overrides.update(self.kv_sharing.engine_settings(client, footprint))
        elif client.spec.kv_cache_memory_bytes is None and client.spec.num_kv_blocks is None:
            client.engine_overrides["kv_cache_memory_bytes"] = footprint.kv_cache_bytes  # what was counted
        self.planner.check(client.name, footprint)
        preload = client.name in self.preloading
        self.preloading.discard(client.name)
        deadline = time.monotonic() + self.load_timeout
        while True:
            async with self._lock:
                try:
                    plan = self.planner.plan(client.name, footprint, self.residents())
                except NoRoomNow as e:
                    client.waiting_for = str(e)
                else:
                    if not plan.sleep and not plan.unload:
                        client.waiting_for = None
                        self.granted.add(client.name)
                        break
                    if not preload:
                        await self._evict(plan, client.name)
                        continue  # plan again: a request may have reached a model named in this plan
                if preload:
                    logger.info("model %s is not preloaded: it does not fit beside the models loaded before it "
                                "(it loads on its first request)", client.name)
                    client.waiting_for = None
                    return False
            if time.monotonic() > deadline and not client.num_pending:  # the waiting requests had their 503s
                logger.warning("model %s did not get room within %.0f s: %s", client.name, self.load_timeout,
                               client.waiting_for)
                client.waiting_for = None
                return False
            await asyncio.sleep(self.poll_interval)
        if self.kv_sharing is not None:
            await self._wait_for_kv_pages(client, deadline)
        return True

    async def _wait_for_kv_pages(self, client, deadline: float):
        """Elastic KV: the pages the others give back to make room are unmapped before its engine starts."""
        client.waiting_for = "KV pages other models are giving back"
        self.kv_sharing.rebalance()
        while not self.kv_sharing.settled and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_interval)
            self.kv_sharing.rebalance()
        if not self.kv_sharing.settled:
            logger.warning("model %s loads before the other models gave back the KV pages it counts on (their "
                           "requests still hold them): its engine may not find the memory free", client.name)
        client.waiting_for = None

    async def _evict(self, plan, for_name: str):
        """The first model of the plan, only: the caller plans again after each."""
        if plan.unload:  # first: an unload may be what leaves the host room for a sleeping model's weights
            victim, action = self.clients[plan.unload[0]], "unload"
        else:
            victim, action = self.clients[plan.sleep[0]], "sleep"
        logger.info("%s model %s (least recently used, idle) to make room for %s", "putting to sleep" if
                    action == "sleep" else "unloading", victim.name, for_name)
        self.evictions += 1
        self.granted.discard(victim.name)  # its next load asks again
        await (victim.sleep() if action == "sleep" else victim.unload())

    def sleep_refused(self, client) -> str | None:
        """Why `client` may not sleep by hand, or None (MemoryPlanner.refuse_sleep)."""
        return self.planner.refuse_sleep(client.name, self.footprint(client), self.residents())

    async def unload(self, client):
        """Unload outside of a plan (the endpoint, keep_alive): no plan counts its memory free before its
        engine is gone."""
        async with self._lock:
            await client.unload()
            self.granted.discard(client.name)


def reported_footprint(client, overhead_bytes: int = 0) -> Footprint | None:
    """The footprint its engine reported when it was last ready (what torch's allocator held beyond the
    weights and KV cache, such as CUDA graphs, counts as overhead)."""
    ready = client.engine_ready
    if ready is None or not ready.memory.weights_bytes:
        return None
    m = ready.memory
    return Footprint(m.weights_bytes, m.kv_cache_bytes,
                     overhead_bytes + max(0, m.device_bytes - m.weights_bytes - m.kv_cache_bytes))


def memory_held(client, memory: ModelMemory | None) -> int:
    """Device memory the model holds in its state now: its footprint while awake or loading, its overhead
    while asleep, nothing while unloaded (under a budget, as counted; else as its engine reported)."""
    state = str(client.state)
    if state not in AWAKE and state != "sleeping" or client.model_dir is None:
        return 0
    if memory is not None:
        if state in ("loading", "restarting") and client.name not in memory.granted:
            return 0  # still waiting for its room
        footprint = memory.footprint(client)
    elif (footprint := reported_footprint(client)) is None:
        return 0
    return footprint.overhead_bytes if state == "sleeping" else footprint.total_bytes


def estimate_footprint(spec, model_dir: Path, max_model_len: int, overhead_bytes: int = 0) -> Footprint:
    """Weights from the safetensors headers (parameters x the dtype the engine loads them in) and the rotary
    table, the KV cache
    as configured (kv_cache_memory_bytes, num_kv_blocks), else the least that holds max_model_len tokens;
    per rank of a tensor-parallel model."""
    config, model_config = engine_configs(spec, model_dir, max_model_len)
    itemsize, ranks = config.torch_dtype.itemsize, config.tensor_parallel_size
    files = sorted(Path(model_dir).glob("*.safetensors"))
    params = sum(safetensors_num_params(f) for f in files) if files and config.load_format != "dummy" else \
        model_config.num_weight_params()
    rotary_table = model_config.max_position_embeddings * model_config.head_dim * 4
    weights = params * itemsize // ranks + rotary_table  # the layers share one float32 cos/sin table
    block_bytes = kv_block_bytes(config, model_config)
    if spec.kv_cache_memory_bytes is not None:
        kv = spec.kv_cache_memory_bytes // block_bytes * block_bytes
    elif spec.num_kv_blocks is not None:
        kv = spec.num_kv_blocks * block_bytes
    else:
        kv = min_kv_blocks(config.max_model_len, config.block_size) * block_bytes
    return Footprint(weights, kv, overhead_bytes)


def min_kv_blocks(max_model_len: int, block_size: int) -> int:
    """The least KV cache a model is counted with, and the least an elastic grant gives it: one sequence of
    max_model_len."""
    return -(-max_model_len // block_size)


def engine_configs(spec, model_dir: Path, max_model_len: int | None):
    """The EngineConfig and ModelConfig of the model's engine, from its settings and config.json."""
    from corral.config import EngineConfig
    from corral.model_config import ModelConfig
    config = EngineConfig(model=str(model_dir), **dict(spec.engine_args(), max_model_len=max_model_len))
    return config, ModelConfig.from_hf(config.hf_config)


def kv_block_bytes(config, model_config) -> int:
    """One KV block of every layer, keys and values, on one rank: what the engine's KV grows by."""
    mc = model_config
    return kv_cache_bytes(config.block_size, config.block_size, mc.num_hidden_layers,
                          max(1, mc.num_key_value_heads // config.tensor_parallel_size), mc.head_dim,
                          config.kv_dtype.itemsize)


def safetensors_num_params(path: Path) -> int:
    """Parameters in a safetensors file, from its header alone."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    total = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        count = 1
        for dim in entry["shape"]:
            count *= dim
        total += count
    return total


def _on_cuda(spec) -> bool:
    from corral.server.placement import uses_cuda
    return uses_cuda(spec)


def host_memory() -> int:
    """This machine's physical memory."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def cuda_device_memory() -> int:
    """The first visible GPU's memory, asked of a child process: the API process never starts CUDA."""
    code = "import torch; print(torch.cuda.get_device_properties(0).total_memory)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        from corral.config import ConfigError
        raise ConfigError(f"cannot read the GPU's memory for the memory budget; give --memory-budget "
                          f"({out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode})")
    return int(out.stdout.strip())
