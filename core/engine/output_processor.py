from dataclasses import dataclass, field

from corral.engine.detokenizer import IncrementalDetokenizer
from corral.outputs import (CompletionOutput, EmbeddingOutput, EmbeddingRequestOutput, EngineCoreOutput, RequestOutput,
                            TokenLogprob)
from corral.sampling_params import SamplingParams


@dataclass(slots=True, eq=False)
class SequenceState:
    """One of a request's n sequences, as the client sees it: text, tokens, logprobs."""

    index: int
    detokenizer: IncrementalDetokenizer
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    sent_tokens: int = 0
    sent_logprobs: int = 0


@dataclass(slots=True, eq=False)
class RequestState:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    params: SamplingParams
    delta: bool
    sequences: list[SequenceState]
    final_only: bool = False
    num_cached_tokens: int | None = None  # the fewest any of its sequences found cached

    @property
    def finished(self) -> bool:
        return all(s.finish_reason is not None for s in self.sequences)


def child_request_id(request_id: str, index: int, n: int) -> str:
    return request_id if n == 1 else f"{index}_{request_id}"


class OutputProcessor:
    """Turns engine token ids into client outputs: incremental text, stop strings, logprobs,
    and the n sequences of one request gathered under its id; embedding requests' vectors as they are."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.requests: dict[str, RequestState] = {}
        self.children: dict[str, tuple[RequestState, SequenceState]] = {}
        self.pooling: dict[str, list[int]] = {}  # embedding requests: their prompts' token ids

    def add_request(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                    params: SamplingParams, delta: bool = False, final_only: bool = False) -> list[str]:
        """Registers the request; returns the engine request ids of its n sequences."""
        child_ids = self.child_ids_for(request_id, params)
        if request_id in self.requests or any(c in self.children for c in child_ids):
            raise ValueError(f"request id {request_id!r} is already in use (or one of its {params.n} "
                             "sequences' ids, index_requestid, is)")
        sequences = [SequenceState(i, IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params),
                                   logprobs=[] if params.logprobs is not None else None,
                                   cumulative_logprob=0.0 if params.logprobs is not None else None)
                     for i in range(params.n)]
        state = RequestState(request_id, prompt, prompt_token_ids, params, delta, sequences, final_only)
        self.requests[request_id] = state
        for child_id, seq in zip(child_ids, sequences):
            self.children[child_id] = (state, seq)
        return child_ids

    def add_pooling_request(self, request_id: str, prompt_token_ids: list[int]):
        """Registers an embedding request (its engine request has the same id)."""
        if self.has_request(request_id) or request_id in self.children:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.pooling[request_id] = prompt_token_ids

    def has_request(self, request_id: str) -> bool:
        return request_id in self.requests or request_id in self.pooling

    def parent_id(self, engine_request_id: str) -> str | None:
        """The request that an engine request (one of its n sequences, or an embedding) belongs to."""
        entry = self.children.get(engine_request_id)
        if entry is not None:
            return entry[0].request_id
        return engine_request_id if engine_request_id in self.pooling else None

    @staticmethod
    def child_ids_for(request_id: str, params: SamplingParams) -> list[str]:
        return [child_request_id(request_id, i, params.n) for i in range(params.n)]

    def child_ids(self, request_id: str) -> list[str]:
        state = self.requests.get(request_id)
        if state is None:
            return [request_id] if request_id in self.pooling else []
        return [child_request_id(request_id, s.index, state.params.n) for s in state.sequences]

    def abort(self, request_id: str) -> RequestOutput | None:
        """Forget the request; returns its final output with finish_reason 'abort' if it was live."""
        state = self.requests.get(request_id)
        if state is None:
            self.pooling.pop(request_id, None)
            return None
        for seq in state.sequences:
            if seq.finish_reason is None:
                seq.finish_reason = "abort"
        self._drop(state)
        return self._make_output(state, state.sequences)

    def process(self, outputs: list[EngineCoreOutput]
                ) -> tuple[list[RequestOutput | EmbeddingRequestOutput], list[str]]:
        """Returns the updated request outputs and the engine ids to abort (a stop string hit)."""
        touched: dict[str, tuple[RequestState, list[SequenceState]]] = {}
        to_abort, embeddings = [], []
        for out in outputs:
            entry = self.children.get(out.request_id)
            if entry is None:
                if out.pooling_output is not None and (ids := self.pooling.pop(out.request_id, None)) is not None:
                    embeddings.append(EmbeddingRequestOutput(out.request_id, ids, EmbeddingOutput(out.pooling_output),
                                                             num_cached_tokens=out.num_cached_tokens))
                continue
            state, seq = entry
            if seq.finish_reason is not None:
                continue
            if state.num_cached_tokens is None or out.num_cached_tokens < state.num_cached_tokens:
                state.num_cached_tokens = out.num_cached_tokens
            num_taken, stop = seq.detokenizer.take(out.new_token_ids)
            seq.token_ids.extend(out.new_token_ids[:num_taken])
            if out.new_logprobs and seq.logprobs is not None:
                new_logprobs = out.new_logprobs[:num_taken]
                seq.logprobs.extend(new_logprobs)
                seq.cumulative_logprob += sum(lp.logprob for lp in new_logprobs)
            if stop is None and out.finish_reason is not None:
                stop = seq.detokenizer.flush()
            if stop is not None:
                seq.finish_reason, seq.stop_reason = "stop", stop
                if out.finish_reason is None:
                    to_abort.append(out.request_id)
            elif out.finish_reason is not None:
                seq.finish_reason, seq.stop_reason = out.finish_reason, out.stop_reason
            touched.setdefault(state.request_id, (state, []))[1].append(seq)
        results = []
        for state, seqs in touched.values():
            finished = state.finished
            if finished or not state.final_only:
                results.append(self._make_output(state, seqs if state.delta else state.sequences))
            if finished:
                self._drop(state)
        return results + embeddings, to_abort

    def _drop(self, state: RequestState):
        self.requests.pop(state.request_id, None)
        for seq in state.sequences:
            self.children.pop(child_request_id(state.request_id, seq.index, state.params.n), None)

    def _make_output(self, state: RequestState, sequences: list[SequenceState]) -> RequestOutput:
        completions = []
        for seq in sequences:
            finished = seq.finish_reason is not None
            if state.delta:
                text = seq.detokenizer.get_delta(finished)
                token_ids = seq.token_ids[seq.sent_tokens:]
                logprobs = seq.logprobs[seq.sent_logprobs:] if seq.logprobs is not None else None
                seq.sent_tokens = len(seq.token_ids)
                seq.sent_logprobs = len(seq.logprobs) if seq.logprobs is not None else 0
            else:
                text, token_ids, logprobs = seq.detokenizer.output_text, list(seq.token_ids), seq.logprobs
            completions.append(CompletionOutput(seq.index, text, token_ids, seq.cumulative_logprob, logprobs,
                                                seq.finish_reason, seq.stop_reason))
        return RequestOutput(state.request_id, state.prompt, state.prompt_token_ids, completions, state.finished,
                             state.num_cached_tokens or 0)
