"""Everything that crosses from the API process to an engine process and back: named, typed
structs, never tuples read by position. The engine builds its own `Request` from an
`EngineCoreRequest`; nothing mutable of the engine's is pickled across."""
from dataclasses import dataclass, field

from corral.outputs import EngineCoreOutput
from corral.pooling_params import PoolingParams
from corral.sampling_params import SamplingParams


@dataclass(slots=True)
class EngineCoreRequest:
    """One sequence to generate: a validated prompt and its own sampling params (n already fanned out)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int]
    arrival_time: float
    cache_salt: str | None = None  # only requests with the same salt share prefix-cache blocks
    pooling_params: PoolingParams | None = None  # an embedding request: its prompt's pooled vector, no tokens


@dataclass(slots=True)
class SchedulerStats:
    """The engine's load, sent with every batch of outputs (gauges, /health, gateways)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    num_kv_blocks: int = 0
    num_free_kv_blocks: int = 0
    prefix_cache_hit_tokens: int = 0
    prefix_cache_query_tokens: int = 0
    num_preemptions: int = 0
    num_needed_kv_blocks: int = 0  # elastic KV's demand (0 otherwise): blocks in use plus what requests need to go on


@dataclass(slots=True)
class EngineMemory:
    """What an engine holds on its device: its weights and KV cache, and all that torch's allocator keeps
    there (CUDA graphs and cached activations included; 0 on CPU)."""

    weights_bytes: int = 0
    kv_cache_bytes: int = 0
    device_bytes: int = 0


@dataclass(slots=True)
class StartupTimes:
    """Seconds each part of an engine's start took (vLLM's startup log, as a record)."""

    weights: float = 0.0         # the model built in its dtype and its checkpoint read into it (or dummy filled)
    memory_profile: float = 0.0  # the profiling forward that sizes the KV cache (CUDA)
    kernels: float = 0.0         # small steps run once, so that Triton compiles their kernels before requests come
    kv_cache: float = 0.0        # the KV cache allocated, or mapped through virtual memory
    cuda_graphs: float = 0.0     # decode steps captured (and the weights moved into virtual memory before)
    engine: float = 0.0          # the whole engine, from its config read to ready


# API process -> engine process

@dataclass(slots=True)
class AddRequests:
    requests: list[EngineCoreRequest]


@dataclass(slots=True)
class AbortRequests:
    request_ids: list[str]


@dataclass(slots=True)
class Shutdown:
    pass


@dataclass(slots=True)
class Sleep:
    """Free the device memory of an idle engine: weights to (pinned) host memory, KV cache and CUDA graphs
    dropped; the process stays. Answered by SleepDone."""


@dataclass(slots=True)
class Wake:
    """Copy the weights back and allocate the KV cache again. Answered by SleepDone."""


@dataclass(slots=True)
class SetKVGrant:
    """Elastic KV memory: use this many of the reserved KV blocks (grown at once; shrunk as blocks past it
    empty). The next EngineOutputs' stats say how many it holds."""

    num_blocks: int


# engine process -> API process

@dataclass(slots=True)
class EngineReady:
    pid: int
    max_model_len: int
    num_kv_blocks: int
    block_size: int
    vocab_size: int
    memory: EngineMemory = field(default_factory=EngineMemory)
    startup: StartupTimes = field(default_factory=StartupTimes)


@dataclass(slots=True)
class EngineOutputs:
    """One step's outputs (possibly none, after requests changed) and the load after it."""

    outputs: list[EngineCoreOutput]
    stats: SchedulerStats


@dataclass(slots=True)
class RequestRejected:
    request_id: str
    message: str


@dataclass(slots=True)
class SleepDone:
    """The answer to Sleep or Wake: whether the engine sleeps now, what it holds after, or why it could not."""

    asleep: bool
    memory: EngineMemory
    error: str | None = None


@dataclass(slots=True)
class EngineFailed:
    """The engine could not start, or failed while running; it exits after sending this."""

    message: str


@dataclass(slots=True)
class EngineExited:
    """Not sent: the API process's reader reports the pipe closing as this."""


ToEngine = AddRequests | AbortRequests | Shutdown | Sleep | Wake | SetKVGrant
FromEngine = EngineReady | EngineOutputs | RequestRejected | SleepDone | EngineFailed | EngineExited


def coalesced(messages: list[ToEngine]) -> list[ToEngine]:
    """The same messages in the same order, with each run of AddRequests (or of AbortRequests) as one: a burst
    of requests crosses the pipe in one write, and the engine takes them all before its next step."""
    out: list[ToEngine] = []
    for message in messages:
        last = out[-1] if out else None
        if isinstance(message, AddRequests) and isinstance(last, AddRequests):
            out[-1] = AddRequests(last.requests + message.requests)
        elif isinstance(message, AbortRequests) and isinstance(last, AbortRequests):
            out[-1] = AbortRequests(last.request_ids + message.request_ids)
        else:
            out.append(message)
    return out
