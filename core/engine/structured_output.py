"""Structured outputs through xgrammar (the grammar engine vLLM and SGLang use): each request's
grammar is compiled once per process (the compiler caches by grammar text), a matcher per request
follows its tokens, and every step the host fills a token bitmask for the constrained rows while the
device runs the forward; the sampler applies it on the device, so constrained and free requests share
a batch."""
import concurrent.futures
import json
import logging
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from corral.sampling_params import StructuredOutputsParams

logger = logging.getLogger(__name__)

MAX_GRAMMAR_BYTES = 256 << 10
COMPILE_TIMEOUT = 10.0
CACHE_SIZE = 512  # compiled grammars kept per process, least recently used dropped first
XGRAMMAR_LOG_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")  # "[06:26:34] /project/cpp/x.cc:5082: "


class GrammarError(ValueError):
    """A schema, regex or grammar the engine cannot compile."""


class StructuredOutputCompiler:
    """Compiles StructuredOutputsParams for one tokenizer. `vocab_size` is the model's (its logits'
    width), which may pass the tokenizer's own length.

    xgrammar's token table, and so its bitmasks, stop at the tokenizer's last id (`table_size`): xgrammar
    counts every id past the tokenizer's as a special token and pays for each on every token a matcher
    takes. The sampler masks the logits past the table instead (apply_grammar_bitmask)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: list[int]):
        import xgrammar as xgr
        self._xgr = xgr
        last_id = max(tokenizer.get_vocab().values(), default=-1)  # past len(tokenizer) where ids have gaps
        self.table_size = min(vocab_size, max([len(tokenizer), last_id + 1, *(t + 1 for t in stop_token_ids)]))
        self.info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.table_size,
                                                       stop_token_ids=sorted(stop_token_ids) or None)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=2)
        self._cache: OrderedDict = OrderedDict()
        self._cache_lock = threading.Lock()  # the API process checks grammars on worker threads

    def compile(self, params: StructuredOutputsParams):
        key = params.key
        with self._cache_lock:
            if (compiled := self._cache.get(key)) is not None:
                self._cache.move_to_end(key)
                return compiled
        compiled = self._compile(*key)
        with self._cache_lock:
            self._cache[key] = compiled
            if len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _compile(self, kind: str, text: str):
        if len(text) > MAX_GRAMMAR_BYTES:
            raise GrammarError(f"the {kind} is {len(text)} bytes; at most {MAX_GRAMMAR_BYTES} are compiled")
        try:
            if kind == "json":
                json.loads(text)
                grammar = str(self._xgr.Grammar.from_json_schema(text, any_whitespace=False))
                # xgrammar's length-bounded strings let raw control characters through, which JSON forbids
                return self.compiler.compile_grammar(grammar.replace(r'[^\"\\\r\n]', r'[^\0-\x1f\"\\\r\n]'))
            if kind == "json_object":  # OpenAI's JSON mode answers an object; xgrammar's builtin JSON allows any value
                return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            if kind == "regex":
                re.compile(text)
                return self.compiler.compile_regex(text)
            if kind == "choice":
                alternatives = " | ".join(json.dumps(c) for c in json.loads(text))
                return self.compiler.compile_grammar(f"root ::= {alternatives}")
            return self.compiler.compile_grammar(text)
        except (ValueError, RuntimeError, re.error) as e:
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first_line = XGRAMMAR_LOG_PREFIX.sub("", first_line)  # its build machine's source path
            raise GrammarError(f"cannot compile the {kind}: {first_line}") from None

    def check(self, params: StructuredOutputsParams, timeout: float = COMPILE_TIMEOUT):
        """Compile `params` (cached for the engine's own compile when they share this compiler), or
        raise GrammarError, within `timeout` seconds: a grammar that takes longer is refused while
        its compilation finishes on a worker thread."""
        executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")
        try:
            executor.submit(self.compile, params).result(timeout)
        except concurrent.futures.TimeoutError:
            raise GrammarError(f"the {params.key[0]} took longer than {timeout:.0f} s to compile; "
                               "simplify it") from None
        finally:
            executor.shutdown(wait=False)

    def matcher(self, params: StructuredOutputsParams):
        return self._xgr.GrammarMatcher(self.compile(params))

    def batch_matcher(self):
        """Fills many matchers' bitmasks at once on xgrammar's own threads."""
        return self._xgr.BatchGrammarMatcher("auto")

    def allocate_bitmask(self, num_rows: int):
        return self._xgr.allocate_token_bitmask(num_rows, self.info.vocab_size)


@dataclass(slots=True)
class Grammar:
    """A constrained request's matcher, advanced by the scheduler's update with each token taken."""

    matcher: Any
    ended: bool = False  # complete (its stop token taken) or broken (a token it did not allow): the request ends
    rejected: int | None = None  # the token it did not allow: the bitmask failed to hold the sampling to it

    def advance(self, token_ids: list[int]):
        for token_id in token_ids:
            if self.ended:
                return
            if not self.matcher.accept_token(token_id):
                self.ended, self.rejected = True, token_id
                return
            self.ended = self.matcher.is_terminated()


class StructuredOutputManager:
    """The engine's side: a Grammar for each constrained request, and each step's bitmask, filled by
    xgrammar's threads into one of two pinned buffers (the other may still be on its way to the device)."""

    def __init__(self, model_dir: str, vocab_size: int):
        self.model_dir, self.vocab_size = model_dir, vocab_size
        self._compiler: StructuredOutputCompiler | None = None
        self._batch = None
        self._buffers: list = []
        self._next_buffer = 0

    @property
    def compiler(self) -> StructuredOutputCompiler:
        if self._compiler is None:  # the engine process loads the tokenizer only when a grammar needs it
            from corral.engine.tokenizer import eos_token_ids, load_tokenizer
            tokenizer = load_tokenizer(self.model_dir)
            self._compiler = StructuredOutputCompiler(tokenizer, self.vocab_size,
                                                      list(eos_token_ids(self.model_dir, tokenizer)))
        return self._compiler

    def init_request(self, request):
        params = request.sampling_params.structured_outputs
        if params is not None and request.grammar is None:
            request.grammar = Grammar(self.compiler.matcher(params))

    def bitmask(self, requests, pinned: bool) -> tuple[object, list[int], int] | None:
        """The bitmask of `requests` (rows in that order), the rows it constrains and the tokens it
        covers (the grammars' table: logits past it are no token); None if none. A grammar that has
        ended constrains nothing: its request's token is dropped."""
        rows = [i for i, r in enumerate(requests) if r.grammar is not None and not r.grammar.ended]
        if not rows:
            return None
        if self._batch is None:
            self._batch = self.compiler.batch_matcher()
        if not self._buffers or self._buffers[0].shape[0] < len(requests):
            num_rows = 1 << (len(requests) - 1).bit_length()
            self._buffers = [self.compiler.allocate_bitmask(num_rows) for _ in range(2)]
            if pinned:
                self._buffers = [b.pin_memory() for b in self._buffers]
        bitmask = self._buffers[self._next_buffer][:len(requests)]
        self._next_buffer ^= 1
        self._batch.batch_fill_next_token_bitmask([requests[i].grammar.matcher for i in rows], bitmask, rows)
        return bitmask, rows, self.compiler.table_size
