import json
import math
from dataclasses import dataclass, field

INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1


@dataclass(slots=True, frozen=True)
class StructuredOutputsParams:
    """What the output must match (vLLM's names), exactly one of: a JSON schema (`json`, a dict or its
    text), any JSON object (`json_object`), a regular expression, one of several strings (`choice`),
    or an EBNF grammar (xgrammar's dialect of GBNF)."""

    json: str | dict | None = None
    regex: str | None = None
    choice: tuple[str, ...] | list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self):
        given = [k for k in ("json", "regex", "choice", "grammar", "json_object")
                 if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            raise SamplingParamsError("structured_outputs", "structured_outputs takes exactly one of json, regex, "
                                      f"choice, grammar or json_object; got {', '.join(given) or 'none'}")
        if self.choice is not None:
            listed = isinstance(self.choice, (list, tuple)) and self.choice
            if not listed or not all(isinstance(c, str) and c for c in self.choice):
                raise SamplingParamsError("structured_outputs", "choice must be a list of non-empty strings")
            object.__setattr__(self, "choice", tuple(self.choice))
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise SamplingParamsError("structured_outputs", f"{name} must be a non-empty string")
        if self.json is not None and not isinstance(self.json, (str, dict)):
            raise SamplingParamsError("structured_outputs", "json must be a JSON schema (an object or its text)")

    @property
    def key(self) -> tuple[str, str]:
        """(kind, text): what a compiled grammar is cached by."""
        if self.json is not None:
            return "json", self.json if isinstance(self.json, str) else json.dumps(self.json, sort_keys=True)
        if self.json_object:
            return "json_object", ""
        if self.choice is not None:
            return "choice", json.dumps(list(self.choice))
        return ("regex", self.regex) if self.regex is not None else ("grammar", self.grammar)


@dataclass(slots=True)
class SamplingParams:
    """How to pick tokens and when to stop, with the meanings vLLM and OpenAI give them.

    `top_k` 0 or -1 disables top-k; `temperature` 0 is greedy; `logprobs` N returns the chosen
    token's logprob and the N most likely ones (0: only the chosen token's).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    logprobs: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None

    MAX_LOGPROBS = 20

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        if self.top_k == -1:
            self.top_k = 0
        if isinstance(self.structured_outputs, dict):
            self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
        self.validate()

    def validate(self):
        checks = [
            (_is_int(self.n) and self.n >= 1, "n", "must be an integer >= 1"),
            (0 <= self.temperature < math.inf, "temperature", "must be a finite number >= 0"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (_is_int(self.top_k) and self.top_k >= 0, "top_k", "must be 0 or -1 (disabled) or >= 1"),
            (0 <= self.min_p <= 1, "min_p", "must be in [0, 1]"),
            (0 < self.repetition_penalty < math.inf, "repetition_penalty", "must be a finite number > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (self.max_tokens is None or (_is_int(self.max_tokens) and self.max_tokens >= 1),
             "max_tokens", "must be an integer >= 1"),
            (_is_int(self.min_tokens) and self.min_tokens >= 0, "min_tokens", "must be an integer >= 0"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens,
             "min_tokens", f"must be <= max_tokens ({self.max_tokens})"),
            (self.logprobs is None or (_is_int(self.logprobs) and 0 <= self.logprobs <= self.MAX_LOGPROBS),
             "logprobs", f"must be an integer in [0, {self.MAX_LOGPROBS}]"),
            (self.seed is None or (_is_int(self.seed) and INT64_MIN <= self.seed <= INT64_MAX), "seed",
             "must be a 64-bit signed integer"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
            (all(_is_int(t) and t >= 0 for t in self.stop_token_ids), "stop_token_ids",
             "must be non-negative integers"),
            (all(0 <= t <= INT64_MAX for t in self.logit_bias), "logit_bias", "keys must be token ids (>= 0)"),
            (all(-100 <= v <= 100 for v in self.logit_bias.values()), "logit_bias", "values must be in [-100, 100]"),
        ]
        for ok, name, allowed in checks:
            if not ok:
                raise SamplingParamsError(name, f"{name} {allowed}, got {getattr(self, name)!r}")

    def check_vocab(self, vocab_size: int):
        """The token ids named here exist in a vocabulary of vocab_size (the sampler indexes by them)."""
        bad = sorted(t for t in self.logit_bias if t >= vocab_size)
        if bad:
            raise SamplingParamsError("logit_bias",
                                      f"logit_bias token ids must be in [0, {vocab_size}); got {bad[:5]}")

    @property
    def greedy(self) -> bool:
        return self.temperature < 1e-5


class SamplingParamsError(ValueError):
    """A sampling parameter is out of range; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)
