"""The one way into an engine, for the offline LLM and every API dialect alike: chat template,
tokenization, the model's sampling defaults, the checks a prompt must pass, and the fan-out of a
request's n sequences into EngineCoreRequests. Each check is written here once."""
import dataclasses
import functools
import json
import time
from pathlib import Path

from corral.engine.messages import EngineCoreRequest
from corral.engine.structured_output import StructuredOutputCompiler
from corral.engine.tokenizer import eos_token_ids, load_tokenizer, max_token_chars, render_chat
from corral.pooling_params import PoolerConfig, PoolingParams, check_task
from corral.sampling_params import INT64_MIN, SamplingParams

GENERATION_DEFAULTS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class PromptError(ValueError):
    """A prompt the model cannot take."""

    code = "invalid_value"


class TextTooLongError(PromptError):
    """A prompt longer in characters than the context can hold in tokens: refused before tokenizing it."""

    code = "context_length_exceeded"

    def __init__(self, num_chars: int, limit: int, max_model_len: int):
        self.num_chars, self.limit, self.max_model_len = num_chars, limit, max_model_len
        super().__init__(f"the prompt has {num_chars} characters, more than max_model_len {max_model_len} tokens "
                         f"can hold (at most {limit})")


class ContextLengthError(PromptError):
    """The prompt, with the tokens asked for, does not fit the model's context."""

    code = "context_length_exceeded"

    def __init__(self, num_prompt_tokens: int, max_tokens: int | None, max_model_len: int):
        self.num_prompt_tokens, self.max_tokens, self.max_model_len = num_prompt_tokens, max_tokens, max_model_len
        asked = f"{max_tokens} generated tokens" if max_tokens is not None else "at least one generated token"
        super().__init__(f"the prompt has {num_prompt_tokens} tokens, but max_model_len is {max_model_len} "
                         + ("(an embedding's prompt must fit)" if max_tokens == 0 else f"(prompt plus {asked} must fit)"))


def generation_defaults(model_dir: str | Path) -> dict:
    """The sampling values of the model's generation_config.json."""
    path = Path(model_dir) / "generation_config.json"
    if not path.is_file():
        return {}
    values = json.loads(path.read_text())
    return {k: values[k] for k in GENERATION_DEFAULTS if values.get(k) is not None}


def child_params(params: SamplingParams, index: int) -> SamplingParams:
    """The params of sequence `index` of n: n=1, and a distinct seed when one was given."""
    # seed + index, wrapped around the int64 range that seeds take
    seed = None if params.seed is None else (params.seed + index - INT64_MIN) % 2**64 + INT64_MIN
    return dataclasses.replace(params, n=1, seed=seed)


class InputProcessor:
    """What a model's files say about its inputs (tokenizer, EOS ids, vocabulary, context length,
    sampling defaults) and the checks every prompt passes before an engine sees it.

    `defaults` are generation_config.json's sampling values, then any the operator set; a request
    that names a value overrides them."""

    def __init__(self, tokenizer, eos_token_ids: frozenset[int], max_model_len: int, vocab_size: int | None,
                 defaults: dict | None = None, pooler: PoolerConfig | None = None):
        """`pooler`: how the model pools when it is served for embeddings (None: it generates)."""
        self.tokenizer = tokenizer
        self.pooler = pooler
        self.eos_token_ids = eos_token_ids
        self.max_model_len = max_model_len
        self.vocab_size = vocab_size
        self.defaults = dict(defaults or {})
        self._grammars: StructuredOutputCompiler | None = None
        SamplingParams(**self.sampling_defaults)  # a bad default fails now, not per request

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, max_model_len: int, vocab_size: int | None,
                       sampling: dict | None = None, pooler: PoolerConfig | None = None) -> "InputProcessor":
        tokenizer = load_tokenizer(model_dir)
        defaults = {**generation_defaults(model_dir), **(sampling or {})}
        return cls(tokenizer, eos_token_ids(model_dir, tokenizer), max_model_len, vocab_size, defaults, pooler)

    @property
    def sampling_defaults(self) -> dict:
        """The defaults a SamplingParams takes (max_tokens is the request's own business)."""
        return {k: v for k, v in self.defaults.items() if k != "max_tokens"}

    def default_sampling_params(self) -> SamplingParams:
        return SamplingParams(**self.sampling_defaults)

    def render_chat(self, messages: list[dict], add_generation_prompt: bool = True,
                    chat_template_kwargs: dict | None = None, tools: list | None = None) -> str:
        return render_chat(self.tokenizer, messages, add_generation_prompt, chat_template_kwargs, tools)

    def tokenize(self, prompt: str | list[int], add_special_tokens: bool = True, truncate: bool = False) -> list[int]:
        """Token ids of a text that fits the context in characters (a huge text is never tokenized);
        PromptError for one the tokenizer cannot take. `truncate`: the first max_model_len tokens of
        a longer prompt (an embedding's, as Ollama's truncate asks)."""
        if not isinstance(prompt, str):
            return list(prompt[:self.max_model_len] if truncate else prompt)
        if truncate:
            prompt = prompt[:self.max_model_len * self.max_token_chars]
        self.check_text_length(prompt)
        try:
            ids = self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        except (TypeError, ValueError, UnicodeError) as e:
            raise PromptError(f"the prompt cannot be tokenized: {e}") from None
        return ids[:self.max_model_len] if truncate else ids

    def check_text_length(self, text: str):
        limit = self.max_model_len * self.max_token_chars
        if len(text) > limit:
            raise TextTooLongError(len(text), limit, self.max_model_len)

    @functools.cached_property
    def max_token_chars(self) -> int:
        return max_token_chars(self.tokenizer)

    def check_prompt(self, prompt_token_ids: list[int], max_tokens: int | None = None) -> int | None:
        """Raises PromptError for an empty prompt, ids outside the vocabulary, or a prompt that does
        not leave room for `max_tokens` (at least one token when None). Returns the max_tokens to
        use: as asked, else what the context leaves."""
        n, limit = len(prompt_token_ids), self.max_model_len
        if n == 0:
            raise PromptError("the prompt is empty")
        self.check_token_ids(prompt_token_ids)
        if n >= limit or (max_tokens is not None and n + max_tokens > limit):
            raise ContextLengthError(n, max_tokens, limit)
        return max_tokens if max_tokens is not None else limit - n

    def check_task(self, task: str, model: str):
        """TaskError unless the model serves `task` (generate or embed)."""
        check_task(self.pooler, task, model)

    def check_pooling_prompt(self, prompt_token_ids: list[int]):
        """An embedding's prompt: not empty, in the vocabulary, at most max_model_len tokens."""
        if not prompt_token_ids:
            raise PromptError("the prompt is empty")
        self.check_token_ids(prompt_token_ids)
        if len(prompt_token_ids) > self.max_model_len:
            raise ContextLengthError(len(prompt_token_ids), 0, self.max_model_len)

    def check_pooling_params(self, params: PoolingParams, model: str):
        """PoolingParamsError for dimensions the model cannot give."""
        self.pooler.check(params, model)

    def pooling_request(self, request_id: str, prompt_token_ids: list[int], params: PoolingParams,
                        arrival_time: float | None = None, cache_salt: str | None = None) -> EngineCoreRequest:
        """The EngineCoreRequest of a checked embedding request."""
        arrival_time = time.monotonic() if arrival_time is None else arrival_time
        return EngineCoreRequest(request_id, prompt_token_ids, SamplingParams(max_tokens=1), self.eos_token_ids,
                                 arrival_time, cache_salt, pooling_params=params)

    def check_token_ids(self, token_ids: list[int]):
        if self.vocab_size and token_ids and (min(token_ids) < 0 or max(token_ids) >= self.vocab_size):
            bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
            raise PromptError(f"token ids must be in [0, {self.vocab_size}); got {bad[:5]}")

    def check_params(self, params: SamplingParams):
        """Raises SamplingParamsError for what only the model can judge (logit_bias ids), and
        GrammarError for structured outputs that cannot be compiled (in bounded time)."""
        if self.vocab_size:
            params.check_vocab(self.vocab_size)
        if params.structured_outputs is not None:
            self.grammars.check(params.structured_outputs)

    @property
    def grammars(self) -> StructuredOutputCompiler:
        if self._grammars is None:
            self._grammars = StructuredOutputCompiler(self.tokenizer, self.vocab_size or len(self.tokenizer),
                                                      list(self.eos_token_ids))
        return self._grammars

    def engine_requests(self, child_ids: list[str], prompt_token_ids: list[int], params: SamplingParams,
                        arrival_time: float | None = None, cache_salt: str | None = None) -> list[EngineCoreRequest]:
        """One EngineCoreRequest per sequence of a checked request."""
        arrival_time = time.monotonic() if arrival_time is None else arrival_time
        return [EngineCoreRequest(child_id, prompt_token_ids, child_params(params, i), self.eos_token_ids,
                                  arrival_time, cache_salt) for i, child_id in enumerate(child_ids)]
