from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TokenLogprob:
    """A generated token's logprob, its rank, and the top alternatives (token id -> logprob)."""

    token_id: int
    logprob: float
    rank: int
    top: dict[int, float] = field(default_factory=dict)


@dataclass(slots=True)
class EngineCoreOutput:
    """What an engine step produced for one request: token ids only, no text."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    num_cached_tokens: int = 0  # of the prompt, found in the prefix cache
    pooling_output: Any = None  # an embedding request's vector (a float32 numpy array)


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0


@dataclass(slots=True)
class EmbeddingOutput:
    """A prompt's pooled vector: `data` as float32, `embedding` as Python floats."""

    data: Any  # a float32 numpy array

    @property
    def embedding(self) -> list[float]:
        return self.data.tolist()

    @property
    def hidden_size(self) -> int:
        return len(self.data)


@dataclass(slots=True)
class EmbeddingRequestOutput:
    """An embedding request's result (vLLM's name): its prompt's token ids and its vector."""

    request_id: str
    prompt_token_ids: list[int]
    outputs: EmbeddingOutput
    finished: bool = True
    num_cached_tokens: int = 0
