"""Async scheduling and multi-step decode: what a client sees must not depend on how many decode
steps run per host sync, nor on whether the next group is launched before this one's tokens are read."""
import pytest

from corral import LLM, SamplingParams
from corral.engine.output_processor import OutputProcessor
from corral.engine.request import Request
from corral.outputs import EngineCoreOutput


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dirs):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dirs["qwen3"])


def _feed(tokenizer, chunks, finish_last, stop):
    """The completion an OutputProcessor makes of `chunks` of token ids, as the engine would send them:
    each chunk one step's output (a multi-step group gives several ids at once), the last with finish_last;
    it stops early where it asks for an abort (a stop string), as LLMEngine.step does."""
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [5, 6, 7], SamplingParams(max_tokens=64, stop=[stop]), final_only=True)
    for i, chunk in enumerate(chunks):
        finish = finish_last if i == len(chunks) - 1 else None
        results, to_abort = processor.process([EngineCoreOutput("r", chunk, None, finish, None)])
        if results:
            c = results[0].outputs[0]
            return c.token_ids, c.text, c.finish_reason, c.stop_reason
    raise AssertionError("the request never finished")


def test_stop_string_inside_a_multi_step_group_drops_the_tokens_after_it(tokenizer):
    ids = tokenizer.encode("Hello world! How are you today?", add_special_tokens=False)
    single = _feed(tokenizer, [[t] for t in ids], None, " world")
    assert single[0] == ids[:2] and single[2:] == ("stop", " world")
    # the same ids from one 8-step group: the tokens after the one that completes the stop string
    # were never the client's (single steps would have aborted the request there)
    assert _feed(tokenizer, [ids], None, " world") == single


def test_stop_string_is_found_in_a_group_that_ends_inside_a_character(tokenizer):
    # "... Paris", then the first byte of a 4-byte character: the group's text ends in U+FFFD
    ids = tokenizer.encode("The capital of France is Paris", add_special_tokens=False)
    partial = tokenizer.encode("\U0001F600", add_special_tokens=False)[:1]
    single = _feed(tokenizer, [[t] for t in ids + partial], None, " Paris")
    assert single == (ids, "The capital of France is", "stop", " Paris")
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [5, 6, 7], SamplingParams(max_tokens=64, stop=[" Paris"]), final_only=True)
    _, to_abort = processor.process([EngineCoreOutput("r", ids + partial, None, None, None)])
    assert to_abort == ["r"]  # else the engine generates on past the stop string
    # a group that also ends the request by length ends it at the stop string, as single steps do
    assert _feed(tokenizer, [ids + partial], "length", " Paris") == single


def test_stop_strings_give_the_tokens_of_single_steps(tiny_model_dirs):
    """End to end on the tiny model: its text is full of partial characters."""
    model = str(tiny_model_dirs["qwen3"])
    single = LLM(model, max_model_len=256, num_scheduler_steps=1)
    text = single.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, stop=[text.outputs[0].text[3:6]])
    expected = single.generate([[5, 6, 7]], params)[0].outputs[0]
    actual = LLM(model, max_model_len=256).generate([[5, 6, 7]], params)[0].outputs[0]
    assert (actual.token_ids, actual.text, actual.finish_reason) == (expected.token_ids, expected.text, "stop")


def _drive(core, arrivals, aborts=()):
    """Steps `core` until done; requests join (and leave) at the given steps, some while a group runs."""
    out, step = {}, 0
    while step <= max(arrivals) or core.has_unfinished_requests():
        for request in arrivals.get(step, []):
            core.add_request(request)
            out[request.request_id] = []
        core.abort_requests([rid for at, rid in aborts if at == step])
        for o in core.step():
            out[o.request_id] += o.new_token_ids
        step += 1
    assert core.in_flight is None and core.kv_cache_manager.num_free_blocks == core.num_blocks
    assert not core.kv_cache_manager.req_blocks
    return out


def test_arrivals_and_preemption_while_a_group_runs_match_single_steps(tiny_model_dirs):
    """A small pool (preemptions), shared prefixes (prefix cache), requests arriving while a
    continuation is in flight, stop tokens and max_model_len inside groups: the tokens of single steps."""
    def arrivals():
        greedy = dict(temperature=0, ignore_eos=True)
        return {0: [Request("a", [5, 6, 7], SamplingParams(max_tokens=None, **greedy)),
                    Request("b", list(range(10, 30)), SamplingParams(max_tokens=21, **greedy))],
                3: [Request("c", list(range(10, 26)) + [4], SamplingParams(max_tokens=40, **greedy))],
                5: [Request("d", [9, 9], SamplingParams(max_tokens=30, stop_token_ids=[188, 55], **greedy))],
                6: [Request("e", [8] * 12, SamplingParams(max_tokens=30, temperature=1.0, seed=3,
                                                           ignore_eos=True))]}
    model = str(tiny_model_dirs["qwen3"])
    cfg = dict(max_model_len=48, num_kv_blocks=10, block_size=8)
    expected = _drive(LLM(model, num_scheduler_steps=1, **cfg).engine.core, arrivals())
    core = LLM(model, num_scheduler_steps=4, **cfg).engine.core
    launch, continuations = core.runner.launch, []

    def counted(out, num_steps=1, previous=None, **kwargs):
        continuations.append(previous is not None)
        return launch(out, num_steps, previous, **kwargs)

    core.runner.launch = counted
    assert _drive(core, arrivals()) == expected
    assert any(continuations) and core.scheduler.num_preemptions > 0
    # and a request aborted while its continuation runs: blocks back, nothing after the abort
    out = _drive(core, arrivals(), aborts=[(4, "a"), (7, "c"), (8, "e")])
    for rid in ("b", "d"):
        assert out[rid] == expected[rid]
    for rid in ("a", "c", "e"):
        assert out[rid] == expected[rid][:len(out[rid])]


@pytest.mark.parametrize("cfg", [dict(max_num_batched_tokens=16),                            # chunked prompts
                                 dict(max_num_batched_tokens=24, num_kv_blocks=10, block_size=8)])  # preemption
def test_prompts_and_arrivals_join_the_step_launched_before_the_last_one_is_read(cfg, tiny_model_dirs):
    """One step per launch (the default): while a step runs, the next is launched with the decodes of the
    tokens it samples, read on the device, beside the next chunks of long prompts and newly admitted
    requests. The tokens are those of synchronous steps."""
    def arrivals():
        greedy = dict(temperature=0, ignore_eos=True)
        return {0: [Request("a", [5, 6, 7], SamplingParams(max_tokens=30, **greedy)),
                    Request("b", list(range(10, 50)), SamplingParams(max_tokens=12, **greedy))],
                2: [Request("c", list(range(10, 26)) + [4], SamplingParams(max_tokens=20, **greedy))],
                4: [Request("d", [9, 9], SamplingParams(max_tokens=25, stop_token_ids=[188, 55], **greedy)),
                    Request("e", [8] * 30, SamplingParams(max_tokens=18, temperature=1.0, seed=3,
                                                           ignore_eos=True))],
                9: [Request("f", [3, 1, 4, 1, 5], SamplingParams(max_tokens=6, min_tokens=4, **greedy))]}
    model = str(tiny_model_dirs["qwen3"])
    expected = _drive(LLM(model, max_model_len=80, async_scheduling=False, **cfg).engine.core, arrivals())
    core = LLM(model, max_model_len=80, **cfg).engine.core
    launch, mixed, joined = core.runner.launch, [], []

    def counted(out, num_steps=1, previous=None, **kwargs):
        if previous is not None:
            kinds = {s.from_previous for s in out.scheduled}
            mixed.append(kinds == {True, False})
            joined.append(any(s.num_computed_tokens == 0 for s in out.scheduled))
        return launch(out, num_steps, previous, **kwargs)

    core.runner.launch = counted
    assert _drive(core, arrivals()) == expected
    assert any(mixed) and any(joined)


def test_grammars_of_requests_joining_the_step_launched_ahead_hold_as_in_synchronous_steps(tiny_model_dirs):
    """Constrained requests (regex, choice, JSON schema) arriving while other requests decode and prompts
    go in chunks: each step's bitmask still follows the token sampled just before it."""
    from corral.sampling_params import StructuredOutputsParams
    grammars = [StructuredOutputsParams(regex="[a-z]{2,6} [0-9]{1,3}"),
                StructuredOutputsParams(choice=["Paris", "Beijing", "hello world"]),
                StructuredOutputsParams(json={"type": "object", "properties": {"a": {"type": "integer"}},
                                              "required": ["a"]})]

    def arrivals():
        out = {}
        for i in range(12):
            params = SamplingParams(max_tokens=(3, 8, 20)[i % 3], temperature=(0, 1.0)[i % 2], seed=i,
                                    structured_outputs=grammars[i % 3] if i % 4 != 3 else None)
            prompt = [(7 * i + j) % 500 + 3 for j in range(1 + 8 * (i % 4))]
            out.setdefault(i // 2 * 2, []).append(Request(f"r{i}", prompt, params))
        return out
    model = str(tiny_model_dirs["qwen3"])
    cfg = dict(max_num_batched_tokens=16, max_model_len=64)
    expected = _drive(LLM(model, async_scheduling=False, **cfg).engine.core, arrivals())
    core = LLM(model, **cfg).engine.core
    launch, deferred_mixed = core.runner.launch, []

    def counted(out, num_steps=1, previous=None, **kwargs):
        if previous is not None and kwargs.get("defer_sampling"):
            deferred_mixed.append({s.from_previous for s in out.scheduled} == {True, False})
        return launch(out, num_steps, previous, **kwargs)

    core.runner.launch = counted
    assert _drive(core, arrivals()) == expected
    assert any(deferred_mixed)


@pytest.mark.parametrize("cfg", [dict(max_num_seqs=2),                       # the batch is full
                                 dict(num_kv_blocks=5, block_size=8)])       # the pool is full
def test_a_backlog_that_cannot_be_admitted_still_decodes_in_groups(cfg, tiny_model_dirs):
    """Five requests, room for two: the rest wait for a slot, and while none can be admitted the
    two running ones still decode several steps per host sync, with the tokens of single steps."""
    def arrivals():
        greedy = dict(temperature=0, ignore_eos=True)
        return {0: [Request(f"r{i}", [5 + i, *range(6, 14)], SamplingParams(max_tokens=9 + 3 * i, **greedy))
                    for i in range(5)]}
    model = str(tiny_model_dirs["qwen3"])
    expected = _drive(LLM(model, max_model_len=32, num_scheduler_steps=1, **cfg).engine.core, arrivals())
    core = LLM(model, max_model_len=32, num_scheduler_steps=4, **cfg).engine.core
    launch, groups_while_waiting = core.runner.launch, []

    def counted(out, num_steps=1, previous=None, **kwargs):
        if core.scheduler.waiting:
            groups_while_waiting.append(num_steps)
        return launch(out, num_steps, previous, **kwargs)

    core.runner.launch = counted
    assert _drive(core, arrivals()) == expected
    assert max(groups_while_waiting) == 4


@pytest.mark.parametrize("cfg", [dict(max_num_batched_tokens=16),                            # chunked prompts
                                 dict(max_num_batched_tokens=24, num_kv_blocks=5, block_size=16)])  # preemption
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_penalized_requests_go_on_in_steps_launched_ahead_with_the_tokens_of_synchronous_steps(cfg, device,
                                                                                                tiny_model_dirs):
    """Repetition, presence and frequency penalties and min_tokens read the output so far; the token a
    running step samples reaches them on the device (TokenHistory), so their requests go on in steps
    launched before it is read, beside free requests, and sample what synchronous steps sample."""
    cfg = dict(cfg, device=device, dtype="float32")
    def arrivals():
        penalties = [dict(repetition_penalty=1.8), dict(presence_penalty=1.5), dict(frequency_penalty=2.0),
                     dict(repetition_penalty=0.7, frequency_penalty=-0.5, presence_penalty=0.4), {}]
        out = {}
        for i in range(10):
            params = SamplingParams(max_tokens=(9, 17, 26)[i % 3], temperature=(0, 1.0)[i % 2], seed=i,
                                    min_tokens=(0, 6)[i % 4 == 1], ignore_eos=i % 3 != 0, **penalties[i % 5])
            prompt = [(11 * i + j) % 300 + 3 for j in range(1 + 9 * (i % 4))]
            out.setdefault(i // 2 * 3, []).append(Request(f"r{i}", prompt, params))
        return out
    model = str(tiny_model_dirs["llama"])
    expected = _drive(LLM(model, max_model_len=80, async_scheduling=False, **cfg).engine.core, arrivals())
    core = LLM(model, max_model_len=80, **cfg).engine.core
    launch, penalized_ahead = core.runner.launch, []

    def counted(out, num_steps=1, previous=None, **kwargs):
        if previous is not None:
            penalized_ahead.append(any(s.from_previous and s.request.sampling_params.repetition_penalty != 1.0
                                       for s in out.scheduled))
        return launch(out, num_steps, previous, **kwargs)

    core.runner.launch = counted
    assert _drive(core, arrivals()) == expected
    assert sum(penalized_ahead) > 5
    assert (core.scheduler.num_preemptions > 0) == ("num_kv_blocks" in cfg)


def test_sleep_drops_the_token_history_and_penalized_requests_after_wake_sample_as_before(tiny_model_dirs):
    """Penalized requests' token ids live on the device (TokenHistory); a sleeping engine holds none of
    them, and after waking the rows are made again from the host's ids."""
    llm = LLM(str(tiny_model_dirs["qwen3"]), max_model_len=80)
    params = [SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, repetition_penalty=1.8),
              SamplingParams(max_tokens=20, temperature=1.0, seed=5, ignore_eos=True, frequency_penalty=1.5)]
    prompts = [[5, 6, 7, 5, 6], [9, 9, 3]]
    before = [o.outputs[0].token_ids for o in llm.generate(prompts, params)]
    core = llm.engine.core
    assert core.runner.history.tokens is not None
    core.sleep()
    assert core.runner.history.tokens is None and not core.runner.history.row_of
    core.wake()
    assert [o.outputs[0].token_ids for o in llm.generate(prompts, params)] == before
