import enum
from dataclasses import dataclass, field
from typing import Any

from corral.engine.messages import EngineCoreRequest
from corral.pooling_params import PoolingParams
from corral.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True, eq=False)
class Request:
    """One sequence being generated. `all_token_ids` is prompt followed by output."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    arrival_time: float = 0.0
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    num_preemptions: int = 0
    num_cached_tokens: int | None = None  # prompt tokens the prefix cache held at its first admission
    cache_salt: str | None = None  # only requests with the same salt share prefix-cache blocks
    # owned by the sampler: a torch.Generator for seeded requests
    generator: Any = None
    # owned by the structured-output manager: the grammar matcher of a constrained request
    grammar: Any = None
    pooling_params: PoolingParams | None = None  # an embedding request's (it samples nothing)
    # owned by the pooling runner: what pooling needs across a chunked prompt
    pooling_state: Any = None

    def __post_init__(self):
        self.all_token_ids = list(self.prompt_token_ids) + list(self.output_token_ids)

    @classmethod
    def from_engine_core_request(cls, request: EngineCoreRequest) -> "Request":
        return cls(request.request_id, request.prompt_token_ids, request.sampling_params, request.eos_token_ids,
                   request.arrival_time, cache_salt=request.cache_salt, pooling_params=request.pooling_params)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_tokens(self, token_ids: list[int]):
        self.output_token_ids.extend(token_ids)
        self.all_token_ids.extend(token_ids)

    @property
    def finish_reason(self) -> str | None:
        return FINISH_REASONS.get(self.status)
