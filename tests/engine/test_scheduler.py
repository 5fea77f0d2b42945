"""The token-budget scheduler alone: no torch, no model. Each step is driven by hand."""
from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.request import Request, RequestStatus
from corral.engine.scheduler import Scheduler
from corral.sampling_params import SamplingParams


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=64, max_model_len=256):
    return Scheduler(KVCacheManager(num_blocks, block_size), max_num_seqs, budget, max_model_len)


def req(request_id, num_prompt, max_tokens=8, **params) -> Request:
    start = 1000 * sum(map(ord, request_id))  # distinct prompts: no prefix-cache hits between them
    return Request(request_id, list(range(start, start + num_prompt)),
                   SamplingParams(max_tokens=max_tokens, **params), eos_token_ids=frozenset({2}))


def step(scheduler: Scheduler, token: int = 7):
    out = scheduler.schedule()
    scheduler.update(out, [[token]] * sum(s.samples for s in out.scheduled))
    return out


def scheduled(out) -> dict[str, int]:
    return {s.request.request_id: s.num_new_tokens for s in out.scheduled}


def test_prefills_and_decodes_share_one_step():
    s = make()
    s.add_request(req("a", 10))
    step(s)
    s.add_request(req("b", 6))
    assert scheduled(step(s)) == {"a": 1, "b": 6}


def test_a_long_prompt_is_chunked_by_the_token_budget():
    s = make(budget=8)
    s.add_request(req("a", 20))
    assert [scheduled(step(s))["a"] for _ in range(3)] == [8, 8, 4]
    assert s.requests["a"].num_output_tokens == 1


def test_only_a_completed_prompt_samples():
    s = make(budget=8)
    s.add_request(req("a", 12))
    first = s.schedule()
    assert [x.samples for x in first.scheduled] == [False]
    s.update(first, [])
    assert [x.samples for x in s.schedule().scheduled] == [True]


def test_running_requests_are_served_before_waiting_ones():
    s = make(budget=10)
    s.add_request(req("a", 9))
    step(s)
    s.add_request(req("b", 30))
    assert scheduled(step(s)) == {"a": 1, "b": 9}


def test_max_num_seqs_caps_the_running_set():
    s = make(max_num_seqs=2)
    for name in "abc":
        s.add_request(req(name, 3))
    assert set(scheduled(step(s))) == {"a", "b"}
    assert [r.request_id for r in s.waiting] == ["c"]


def test_the_newest_running_request_is_preempted_when_blocks_run_out():
    s = make(num_blocks=4, block_size=4, max_model_len=16)
    s.add_request(req("old", 4, max_tokens=10))
    s.add_request(req("new", 4, max_tokens=10))
    step(s)                       # each holds one full block, plus a sampled token
    out = step(s)                 # both need a second block: 4 blocks in use
    assert scheduled(out) == {"old": 1, "new": 1}
    for _ in range(4):            # positions 5..8: the fourth step needs a third block each
        out = step(s)
    assert [r.request_id for r in out.preempted] == ["new"]
    assert s.requests["new"].status == RequestStatus.PREEMPTED
    assert s.requests["new"].num_computed_tokens == 0
    assert s.waiting.peek().request_id == "new"


def test_a_preempted_request_resumes_with_its_output_recomputed():
    s = make(num_blocks=4, block_size=4, max_model_len=16)
    s.add_request(req("old", 4, max_tokens=6))
    s.add_request(req("new", 4, max_tokens=6))
    new = s.requests["new"]
    while new.num_preemptions == 0:
        step(s)
    num_tokens_before = new.num_tokens
    while "old" in s.requests:
        step(s)
    resumed = next(x for x in step(s).scheduled if x.request is new)
    assert resumed.num_computed_tokens + resumed.num_new_tokens == num_tokens_before  # cached blocks reused
    while "new" in s.requests:
        step(s)
    assert new.num_output_tokens == 6


def test_max_tokens_finishes_with_length():
    s = make()
    r = req("a", 3, max_tokens=2)
    s.add_request(r)
    step(s)
    step(s)
    assert r.status == RequestStatus.FINISHED_LENGTH and not s.has_unfinished_requests()


def test_eos_finishes_unless_ignored_or_below_min_tokens():
    s = make()
    stops, ignores, waits = req("stop", 3), req("ignore", 3, ignore_eos=True), req("wait", 3, min_tokens=2)
    for r in (stops, ignores, waits):
        s.add_request(r)
    step(s, token=2)
    assert stops.status == RequestStatus.FINISHED_STOPPED
    assert ignores.status == waits.status == RequestStatus.RUNNING


def test_stop_token_ids_finish_and_are_reported():
    s = make()
    r = req("a", 3, stop_token_ids=[7])
    s.add_request(r)
    step(s, token=7)
    assert r.status == RequestStatus.FINISHED_STOPPED and r.stop_reason == 7


def test_max_model_len_finishes_with_length():
    s = make(max_model_len=5)
    r = req("a", 3, max_tokens=100)
    s.add_request(r)
    step(s)
    step(s)
    assert r.status == RequestStatus.FINISHED_LENGTH and r.num_tokens == 5


def test_aborting_frees_blocks_at_once():
    s = make(num_blocks=16)
    s.add_request(req("a", 10))
    step(s)
    s.finish_requests(["a"])
    assert s.kv.num_free_blocks == 16 and not s.has_unfinished_requests()


def test_aborting_a_waiting_request_removes_it_from_the_queue():
    s = make(max_num_seqs=1)
    s.add_request(req("a", 3))
    s.add_request(req("b", 3))
    step(s)
    s.finish_requests(["b"])
    assert not s.waiting


def test_multi_step_tokens_advance_the_computed_count():
    s = make()
    r = req("a", 3, max_tokens=20)
    s.add_request(r)
    step(s)
    out = s.schedule()
    assert s.add_lookahead(out, 4)
    s.update(out, [[7, 8, 9, 10]])
    assert r.output_token_ids == [7, 7, 8, 9, 10] and r.num_computed_tokens == r.num_tokens - 1
    assert len(s.kv.block_ids("a")) == 2  # 3 prompt + 4 decoded positions need two blocks of 4


def test_multi_step_tokens_after_a_stop_are_dropped():
    s = make()
    r = req("a", 3, max_tokens=20, stop_token_ids=[8])
    s.add_request(r)
    step(s)
    out = s.schedule()
    s.add_lookahead(out, 4)
    (request, appended), = s.update(out, [[7, 8, 9, 10]])
    assert appended == [7, 8] and r.status == RequestStatus.FINISHED_STOPPED
    assert s.kv.num_free_blocks == 64


def test_a_request_kept_waiting_counts_its_prefix_cache_lookup_once():
    s = make(num_blocks=4, block_size=4)
    s.add_request(req("a", 12, max_tokens=3))
    s.add_request(req("b", 8))  # no room until a finishes, three steps on
    assert [("b" in scheduled(step(s))) for _ in range(4)] == [False, False, False, True]
    assert s.kv.num_query_tokens == 12 + 8  # the prefix-cache hit rate's denominator
