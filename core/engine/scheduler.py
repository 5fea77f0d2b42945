import logging
from dataclasses import dataclass, field

from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.request import Request, RequestStatus
from corral.engine.request_queue import FCFSQueue

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ScheduledRequest:
    request: Request
    num_computed_tokens: int    # before this step
    num_new_tokens: int
    block_ids: list[int]
    samples: bool = False  # the step reaches the request's last known token: sample the next one
    from_previous: bool = False  # its one input token is the one the step before samples, read on the device

    def __post_init__(self):
        self.samples = self.num_computed_tokens + self.num_new_tokens == self.request.num_tokens


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


@dataclass(slots=True)
class FinishedEvent:
    request: Request
    new_token_ids: list[int]


class Scheduler:
    """There are no prefill and decode phases. Each step spends a token budget bringing every
    request's computed tokens up to its total (prompt + output so far): running requests first,
    then waiting ones. Long prompts are chunked by the budget, prefix-cache hits skip computed
    blocks, and when blocks run out the newest running request is preempted and recomputed later.

    A batch of plain decodes may run several steps per host sync (multi-step decode, up to
    `num_scheduler_steps`), and the next such group may be scheduled before the current one's tokens
    are back (`schedule_continuation`); both are decided here, so that the engine loop stays a loop.
    """

    def __init__(self, kv_cache_manager: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int, num_scheduler_steps: int = 1):
        self.kv = kv_cache_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.num_scheduler_steps = num_scheduler_steps
        self.waiting = FCFSQueue()
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        # the last schedule left requests waiting that no step can admit until one finishes: the
        # batch was full (max_num_seqs) or the KV pool could not hold the next one
        self.admission_blocked = False

    def add_request(self, request: Request):
        self.requests[request.request_id] = request
        self.waiting.add(request)
        self.admission_blocked = False

    def may_admit(self) -> bool:
        """Whether a request waits that the next schedule might admit."""
        return bool(self.waiting) and not self.admission_blocked

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            request = self.running[i]
            num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            block_ids = self.kv.allocate(request, num_new)
            while block_ids is None:
                victim = self.running.pop()
                self._preempt(victim)
                out.preempted.append(victim)
                if victim is request:
                    break
                block_ids = self.kv.allocate(request, num_new)
            if block_ids is None:
                break
            out.scheduled.append(ScheduledRequest(request, request.num_computed_tokens, num_new, block_ids))
            budget -= num_new
            i += 1

        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
        if out.preempted:
            self.admission_blocked = False  # the preempted wait first; the next schedule sees the room
        else:
            self._admit(out, budget)
        return out

    def _admit(self, out: SchedulerOutput, budget: int):
        """Waiting requests, oldest first, while the budget, the batch and the pool have room."""
        no_room = False
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting.peek()
            computed_blocks, num_computed = self.kv.get_computed_blocks(request)
            num_new = min(request.num_tokens - num_computed, budget)
            block_ids = self.kv.allocate(request, num_new, computed_blocks)
            if block_ids is None:
                no_room = True
                break
            self.waiting.pop_request()
            request.status = RequestStatus.RUNNING
            if request.num_cached_tokens is None:
                request.num_cached_tokens = num_computed
            request.num_computed_tokens = num_computed + num_new
            self.running.append(request)
            out.scheduled.append(ScheduledRequest(request, num_computed, num_new, block_ids))
            budget -= num_new
        self.admission_blocked = bool(self.waiting) and (no_room or len(self.running) >= self.max_num_seqs)

    def _preempt(self, request: Request):
        self.kv.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.prepend(request)

    def num_decode_steps(self, scheduler_output: SchedulerOutput) -> int:
        """Decode steps for this batch, with room reserved for them: several when it holds only plain
        decodes that need nothing per step from the host (penalties and min_tokens read the output
        so far; logprobs are returned per step; a grammar masks each step by the tokens before) and
        no waiting request could join. A request that
        stops early wastes its extra steps."""
        n = self.num_scheduler_steps
        if n <= 1 or self.may_admit():
            return 1
        for s in scheduler_output.scheduled:
            request, params = s.request, s.request.sampling_params
            if s.num_new_tokens != 1 or not s.samples:
                return 1
            if (params.logprobs is not None or params.min_tokens > request.num_output_tokens
                    or params.repetition_penalty != 1.0 or params.presence_penalty or params.frequency_penalty
                    or request.grammar is not None):  # a grammar's next bitmask needs this token
                return 1
            n = min(n, self.max_model_len - request.num_tokens)  # tokens past max_tokens are dropped
        if n <= 1 or not self.add_lookahead(scheduler_output, n):
            return 1
        return n

    def add_lookahead(self, scheduler_output: SchedulerOutput, num_steps: int) -> bool:
        """Room for num_steps - 1 more decode steps of every scheduled request. False if the pool
        cannot hold them; blocks already added stay with their requests for the steps to come."""
        for s in scheduler_output.scheduled:
            if self.kv.allocate(s.request, num_steps - 1) is None:
                return False
        return True

    def schedule_continuation(self, scheduler_output: SchedulerOutput, num_steps: int) -> SchedulerOutput | None:
        """The next step (or group of num_steps decode steps), scheduled while the current one
        (`scheduler_output`) still runs, so that the device never waits for the host between steps.
        A request that samples in the current step decodes the token it samples, which the host
        does not know yet (`from_previous`); a single step may also go on with chunked prompts and
        admit waiting requests, as `schedule` would (penalties read the token on the device: TokenHistory).
        None when the scheduler must see the current step's tokens first (a request nears
        max_model_len) or the pool cannot hold the new step (blocks already added stay with their
        requests). The current step's `update` and this one's may come in either order."""
        if self.num_scheduler_steps > 1:
            return self._decode_group_continuation(scheduler_output, num_steps)
        sampling = set()  # the requests whose next input is the token the current step samples
        for s in scheduler_output.scheduled:
            if s.samples and s.request.status == RequestStatus.RUNNING:
                if self.max_model_len - s.request.num_tokens < 2:
                    return None
                sampling.add(s.request.request_id)
        out, budget = SchedulerOutput(), self.max_num_batched_tokens
        for request in self.running:  # as `schedule` does, with the tokens in flight counted in
            if budget <= 0:
                break
            from_previous = request.request_id in sampling
            if from_previous:
                params = request.sampling_params
                if params.max_tokens is not None and params.max_tokens - request.num_output_tokens <= 1:
                    continue  # it ends by length in the current step
                num_new = 1
            else:  # the next chunk of its prompt, or a token the host has
                num_new = min(request.num_tokens - request.num_computed_tokens, budget)
            block_ids = self.kv.allocate(request, num_new)
            if block_ids is None:
                return None
            scheduled = ScheduledRequest(request, request.num_computed_tokens, num_new, block_ids,
                                         from_previous=from_previous)
            scheduled.samples |= from_previous
            out.scheduled.append(scheduled)
            budget -= num_new
        for s in out.scheduled:
            s.request.num_computed_tokens += s.num_new_tokens
        self._admit(out, budget)
        return out if out.scheduled else None

    def _decode_group_continuation(self, scheduler_output: SchedulerOutput, num_steps: int
                                   ) -> SchedulerOutput | None:
        """Under multi-step decode, a decode group (or step) after the current one: only while no waiting
        request could join, after plain decodes, and never when a request that ends by length in the
        current group leaves a slot to fill (the sync path then picks the next group's size)."""
        if self.may_admit():
            return None
        requests = []
        for s in scheduler_output.scheduled:
            request, params = s.request, s.request.sampling_params
            if num_steps == 1 and not (s.num_new_tokens == 1 and s.samples):
                return None
            if request.status != RequestStatus.RUNNING:
                continue
            room = self.max_model_len - request.num_tokens
            if room < 2 * num_steps:
                return None
            left = params.max_tokens - request.num_output_tokens if params.max_tokens is not None else room
            if left > num_steps:
                requests.append(request)
            elif self.waiting:
                return None
        if not requests:
            return None
        out = SchedulerOutput()
        for request in requests:
            block_ids = self.kv.allocate(request, 2 * num_steps - 1)
            if block_ids is None:
                return None
            scheduled = ScheduledRequest(request, request.num_computed_tokens + num_steps - 1, 1, block_ids,
                                         from_previous=True)
            scheduled.samples = True
            out.scheduled.append(scheduled)
        for request in requests:
            request.num_computed_tokens += 1
        return out

    def update(self, scheduler_output: SchedulerOutput, sampled_token_ids: list[list[int]],
               after_first_step: bool = False) -> list[tuple[Request, list[int]]]:
        """Append the tokens sampled for each request that sampled (in scheduled order), one by one,
        finishing those that stop; tokens after a stop are dropped. Several tokens per request mean
        a multi-step decode, whose extra steps computed the KV of all but the last token; a group read
        step by step comes as one token each, `after_first_step` for all but the first, whose step
        computed the KV of the token before."""
        updated = []
        samplers = [s.request for s in scheduler_output.scheduled if s.samples]
        for request, token_ids in zip(samplers, sampled_token_ids, strict=True):
            if request.status != RequestStatus.RUNNING:
                continue  # aborted while the step ran
            num_accepted, status = self._first_stop(request, token_ids)
            appended = token_ids[:num_accepted]
            if request.grammar is not None:
                request.grammar.advance(appended)
                if request.grammar.ended:
                    status = status or RequestStatus.FINISHED_STOPPED
                    if request.grammar.rejected is not None:  # never, while the sampler applies the bitmask
                        logger.error("request %s: its grammar does not allow the sampled token %d; the request "
                                     "ends there (the token bitmask was not applied)", request.request_id,
                                     request.grammar.rejected)
            request.append_output_tokens(appended)
            if status is None:
                request.num_computed_tokens += len(token_ids) - 1 + after_first_step
            else:
                self.finish(request, status)
            updated.append((request, appended))
        return updated

    def _first_stop(self, request: Request, token_ids: list[int]) -> tuple[int, RequestStatus | None]:
        """How many of token_ids the request takes, and how it finishes after them (None: it goes
        on). A stop token counts once min_tokens are out; it wins over a length limit on the same
        token, and sets stop_reason when it is one of the request's stop_token_ids."""
        params = request.sampling_params
        num_output = request.num_output_tokens
        room = self.max_model_len - request.num_tokens
        if params.max_tokens is not None:
            room = min(room, params.max_tokens - num_output)
        stops = params.stop_token_ids if params.ignore_eos else (*params.stop_token_ids, *request.eos_token_ids)
        if stops:
            for i in range(max(0, params.min_tokens - num_output - 1), min(room, len(token_ids))):
                token_id = token_ids[i]
                if token_id in stops:
                    if token_id in params.stop_token_ids and (params.ignore_eos or token_id not in request.eos_token_ids):
                        request.stop_reason = token_id
                    return i + 1, RequestStatus.FINISHED_STOPPED
        if room <= len(token_ids):
            return max(room, 1), RequestStatus.FINISHED_LENGTH
        return len(token_ids), None

    def finish(self, request: Request, status: RequestStatus):
        """Finish (stop string, abort, ...) a request wherever it is, freeing its blocks."""
        if request.status.finished:
            return
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
            self.admission_blocked = False  # its slot and blocks are free
        else:
            self.waiting.remove(request)
        request.status = status
        self.kv.free(request)
        self.requests.pop(request.request_id, None)

    def finish_requests(self, request_ids, status: RequestStatus = RequestStatus.FINISHED_ABORTED):
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is not None:
                self.finish(request, status)
