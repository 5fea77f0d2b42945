"""A replica of one model's Ray Serve deployment: one corral engine (an EngineClient and its engine
process) on the CPUs and GPUs Ray gave it. The ingress renders, tokenizes and checks requests; a
replica generates them. These structs are all that crosses between the two."""
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from ray import serve

from corral.engine.messages import SchedulerStats
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.server.config import ModelSpec
from corral.server.engine_client import EngineClient
from corral.server.model_state import ModelState

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack", ".onnx")
MAX_SHIPPED_FILE = 64 << 20  # tokenizer.json of a large vocabulary is some 30 MB


@dataclass(slots=True)
class GenerateRequest:
    """One request, admitted and tokenized by the ingress."""

    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    cache_salt: str | None
    timeout: float  # how long to wait for an engine that is restarting


@dataclass(slots=True)
class ReplicaInfo:
    """What the ingress needs of a model: its files less the weights (tokenizer, config, chat template,
    generation config), read from the directory its engine loaded, and what the engine reported."""

    replica: str
    max_model_len: int
    vocab_size: int
    files: dict[str, bytes]


@dataclass(slots=True)
class ReplicaStats:
    replica: str
    num_requests: int                 # requests this replica has generated
    scheduler: SchedulerStats | None  # its engine's latest load


def replica_cpus(spec: ModelSpec) -> int:
    """CPUs a replica reserves from Ray, and its engine's threads."""
    return spec.num_threads or 1


class ModelReplica:
    """One engine of one model. `spec` is the model's section of the serve config."""

    async def __init__(self, spec: ModelSpec):
        self.replica = serve.get_replica_context().replica_id.unique_id
        # Ray placed this replica and set CUDA_VISIBLE_DEVICES; Ray's autoscaler does the unloading
        spec = dataclasses.replace(spec, devices=None, preload=True, keep_alive=None)
        self.client = EngineClient(spec, num_threads=replica_cpus(spec))
        self.num_requests = 0
        self.client.load()
        await self.client.wait_ready(spec.startup_timeout)

    def info(self) -> ReplicaInfo:
        model_dir: Path = self.client.model_dir
        files = {path.name: path.read_bytes() for path in sorted(model_dir.iterdir())
                 if path.is_file() and not path.name.startswith(".") and not path.name.endswith(WEIGHT_SUFFIXES)
                 and path.stat().st_size <= MAX_SHIPPED_FILE}
        return ReplicaInfo(self.replica, self.client.max_model_len, self.client.input_processor.vocab_size, files)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[RequestOutput]:
        """Delta outputs up to the finished one; a cancelled call aborts the request in the engine."""
        self.num_requests += 1
        async for output in self.client.generate(request.request_id, request.prompt, request.prompt_ids,
                                                 request.params, request.timeout, request.cache_salt):
            yield output

    def stats(self) -> ReplicaStats:
        return ReplicaStats(self.replica, self.num_requests, self.client.stats)

    def check_health(self):
        """Ray replaces a replica whose engine cannot load; an engine that dies is restarted here."""
        if self.client.state == ModelState.ERROR:
            raise RuntimeError(f"model {self.client.name}: {self.client.error}")

    async def __del__(self):
        await self.client.shutdown()
