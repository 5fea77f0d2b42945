"""What a benchmark's `corral serve` says of its models while a load runs (GET /v1/models, sampled), and the
memory budget a benchmark gives it."""
import asyncio
import time

import httpx


class ModelsLog:
    """GET /v1/models every `interval` seconds until `stop` is set: (time.perf_counter(), {id: entry})."""

    def __init__(self):
        self.samples: list[tuple[float, dict[str, dict]]] = []

    async def follow(self, url: str, interval: float, stop: asyncio.Event):
        async with httpx.AsyncClient(timeout=30) as client:
            while not stop.is_set():
                models = (await client.get(f"{url}/v1/models")).json()["data"]
                self.samples.append((time.perf_counter(), {m["id"]: m for m in models}))
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except asyncio.TimeoutError:
                    pass

    def states(self, model: str) -> list[tuple[float, str]]:
        return [(t, entries[model]["state"]) for t, entries in self.samples if model in entries]

    def kv_cache(self, model: str, key: str) -> list[int]:
        """One field of the model's elastic KV grant (granted_blocks, needed_blocks, ...), where shown."""
        return [entries[model]["kv_cache"][key] for _, entries in self.samples
                if entries.get(model, {}).get("kv_cache")]


def memory_budget(value: str | None, device: str | None, gpu_fraction: float) -> int:
    """--memory-budget in bytes; without one, that fraction of the GPU (a CPU run must give one)."""
    from corral.server.config import parse_size
    if value:
        return parse_size(value, "memory_budget")
    if device == "cpu":
        raise SystemExit("--device cpu needs --memory-budget")
    from corral.server.model_memory import cuda_device_memory
    return int(gpu_fraction * cuda_device_memory())
