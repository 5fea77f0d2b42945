"""The offline API beyond greedy parity: seeds, n, stop conditions, logprobs, text."""
import pytest

from corral import LLM, SamplingParams
from corral.engine.request import Request


@pytest.fixture(scope="module")
def llm(tiny_model_dirs):
    return LLM(str(tiny_model_dirs["qwen3"]), max_model_len=256)


def tokens(output, i=0):
    return output.outputs[i].token_ids


def test_seeded_sampling_is_reproducible_whatever_the_batch(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate([[5, 6, 7]], params)[0]
    others = SamplingParams(temperature=1.0, max_tokens=16, ignore_eos=True)
    batched = llm.generate([[9, 9], [5, 6, 7], [11] * 30], [others, params, others])[1]
    assert tokens(alone) == tokens(batched)


def test_different_seeds_give_different_samples(llm):
    a, b = (llm.generate([[5, 6, 7]], SamplingParams(temperature=1.0, seed=s, max_tokens=16, ignore_eos=True))[0]
            for s in (1, 2))
    assert tokens(a) != tokens(b)


def test_n_returns_n_distinct_sequences(llm):
    output = llm.generate([[5, 6, 7]], SamplingParams(n=3, temperature=1.0, seed=7, max_tokens=12, ignore_eos=True))[0]
    assert [c.index for c in output.outputs] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in output.outputs}) == 3


def test_max_tokens_stops_with_length(llm):
    output = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))[0]
    assert len(tokens(output)) == 5 and output.outputs[0].finish_reason == "length"


def test_stop_token_ids_stop_with_the_token_as_stop_reason(llm):
    greedy = tokens(llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0])
    output = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True,
                                                      stop_token_ids=[greedy[3]]))[0]
    first = greedy.index(greedy[3])
    assert tokens(output) == greedy[:first + 1]
    assert output.outputs[0].finish_reason == "stop" and output.outputs[0].stop_reason == greedy[3]


def test_stop_strings_cut_the_text_and_finish_the_request(llm):
    greedy = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))[0].outputs[0]
    stop = greedy.text[8:11]
    assert stop.strip(), "the tiny model's text should be long enough to pick a stop string from"
    output = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=24, ignore_eos=True,
                                                      stop=[stop]))[0].outputs[0]
    assert output.text == greedy.text[:greedy.text.index(stop)]
    assert output.finish_reason == "stop" and output.stop_reason == stop
    assert llm.engine.core.stats().num_running == 0


def test_top_logprobs_are_sorted_and_include_the_sampled_token_rank(llm):
    output = llm.generate([[5, 6, 7]], SamplingParams(temperature=0, max_tokens=4, logprobs=3))[0].outputs[0]
    for entry in output.logprobs:
        values = list(entry.top.values())
        assert len(values) == 3 and values == sorted(values, reverse=True)
        assert entry.rank == 1 and entry.logprob == pytest.approx(values[0])
    assert output.cumulative_logprob == pytest.approx(sum(e.logprob for e in output.logprobs))


def test_string_prompts_are_tokenized_and_text_is_returned(llm):
    output = llm.generate("Hello world", SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))[0]
    tokenizer = llm.get_tokenizer()
    assert output.prompt_token_ids == tokenizer.encode("Hello world")
    # the full decode, less a character the last tokens left incomplete
    assert output.outputs[0].text == tokenizer.decode(output.outputs[0].token_ids).rstrip("\ufffd")


def test_chinese_text_streams_without_broken_characters(llm):
    from corral.engine.output_processor import OutputProcessor
    from corral.outputs import EngineCoreOutput
    tokenizer = llm.get_tokenizer()
    text = "上海有很多高楼，我们喜欢吃饺子。"
    ids = tokenizer.encode(text)
    assert len(ids) > len(text) / 2, "characters should span several byte-level tokens"
    processor = OutputProcessor(tokenizer)
    processor.add_request("zh", None, [5], SamplingParams(max_tokens=len(ids)), delta=True)
    deltas = []
    for i, token in enumerate(ids):
        finish = "length" if i == len(ids) - 1 else None
        outputs, _ = processor.process([EngineCoreOutput("zh", [token], finish_reason=finish)])
        deltas.append(outputs[0].outputs[0].text)
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas)


def test_two_engines_live_in_one_process(tiny_model_dirs):
    qwen, llama = LLM(str(tiny_model_dirs["qwen3"])), LLM(str(tiny_model_dirs["llama"]))
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    alone = [llm.generate([[5, 6, 7]], params)[0].outputs[0].token_ids for llm in (qwen, llama)]
    qwen.engine.add_request("q", [5, 6, 7], params)
    llama.engine.add_request("l", [5, 6, 7], params)
    done = {}
    while qwen.engine.has_unfinished_requests() or llama.engine.has_unfinished_requests():
        for llm in (qwen, llama):
            for output in llm.engine.step():
                done[output.request_id] = output.outputs[0].token_ids
    assert [done["q"], done["l"]] == alone


def test_plain_decode_batches_run_several_steps_per_launch_and_stream_one_token_per_step(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), num_scheduler_steps=4, async_scheduling=False)
    launch, groups = llm.engine.core.runner.launch, []

    def counted(out, num_steps=1, previous=None):
        groups.append(num_steps)
        return launch(out, num_steps, previous)

    llm.engine.core.runner.launch = counted
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    llm.engine.core.add_request(Request("a", [5, 6, 7], params))
    chunks = [len(o.new_token_ids) for _ in range(10) for o in llm.engine.core.step()]
    assert groups == [1, 4, 4, 4]  # prefill, then 4-step decodes (the last one's extra steps dropped)
    assert chunks == [1] * 10  # but each step's token comes back on its own
    single = LLM(str(tiny_model_dirs["llama"]), num_scheduler_steps=1)
    assert (single.generate([[5, 6, 7]], params)[0].outputs[0].token_ids
            == llm.generate([[5, 6, 7]], params)[0].outputs[0].token_ids)


def test_async_scheduling_gives_the_tokens_of_synchronous_steps(tiny_model_dirs):
    model = str(tiny_model_dirs["qwen3"])
    prompts = [[5, 6, 7], [9, 9], [11] * 30, [3, 1, 4, 1, 5]]
    sync = LLM(model, num_scheduler_steps=4, async_scheduling=False)
    free_run = sync.generate(prompts, SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    # each request stops at a token it makes part-way through a 4-step group, or by length
    params = [SamplingParams(temperature=0, max_tokens=13 + 7 * i, ignore_eos=True,
                             stop_token_ids=[tokens(o)[9 + i]]) for i, o in enumerate(free_run)]
    expected = sync.generate(prompts, params)
    llm = LLM(model, num_scheduler_steps=4)
    launch, continuations = llm.engine.core.runner.launch, []

    def counted(out, num_steps=1, previous=None, **kwargs):
        continuations.append(previous is not None)
        return launch(out, num_steps, previous, **kwargs)

    llm.engine.core.runner.launch = counted
    actual = llm.generate(prompts, params)
    assert any(continuations)
    assert ([(tokens(o), o.outputs[0].finish_reason) for o in actual]
            == [(tokens(o), o.outputs[0].finish_reason) for o in expected])
    core = llm.engine.core
    assert core.in_flight is None and core.kv_cache_manager.num_free_blocks == core.num_blocks


def test_abort_while_the_next_group_runs(tiny_model_dirs):
    model = str(tiny_model_dirs["qwen3"])
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    expected = LLM(model, num_scheduler_steps=4, async_scheduling=False).generate([[5, 6, 7]], params)[0]
    core = LLM(model, num_scheduler_steps=4).engine.core
    core.add_request(Request("keep", [5, 6, 7], params))
    core.add_request(Request("drop", [9, 9], params))
    out = {"keep": [], "drop": []}
    while core.in_flight is None or len(core.in_flight[0].scheduled) < 2:
        for o in core.step():
            out[o.request_id] += o.new_token_ids
    core.abort_requests(["drop"])
    dropped_at = len(out["drop"])
    while core.has_unfinished_requests():
        for o in core.step():
            out[o.request_id] += o.new_token_ids
    assert out["keep"] == tokens(expected) and len(out["drop"]) == dropped_at
    assert core.kv_cache_manager.num_free_blocks == core.num_blocks


def test_penalties_turn_multi_step_off(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["llama"]), num_scheduler_steps=4)
    llm.engine.core.add_request(Request("a", [5, 6, 7], SamplingParams(max_tokens=6, repetition_penalty=1.3)))
    assert {len(o.new_token_ids) for _ in range(4) for o in llm.engine.core.step()} == {1}


def test_final_only_requests_report_once_when_they_end(llm):
    from corral.engine.output_processor import OutputProcessor
    from corral.outputs import EngineCoreOutput
    processor = OutputProcessor(llm.get_tokenizer())
    processor.add_request("r", None, [5], SamplingParams(max_tokens=3), final_only=True)
    reported = [processor.process([EngineCoreOutput("r", [t], finish_reason="length" if t == 9 else None)])[0]
                for t in (7, 8, 9)]
    assert reported[:2] == [[], []] and reported[2][0].outputs[0].token_ids == [7, 8, 9]


def test_a_request_id_that_one_of_another_requests_sequences_holds_is_refused(llm):
    from corral.engine.output_processor import OutputProcessor
    processor = OutputProcessor(llm.get_tokenizer())
    assert processor.add_request("abc", None, [5], SamplingParams(n=2)) == ["0_abc", "1_abc"]
    with pytest.raises(ValueError, match="already in use"):
        processor.add_request("0_abc", None, [5], SamplingParams())
    processor.add_request("x", None, [5], SamplingParams())
    with pytest.raises(ValueError, match="already in use"):
        processor.add_request("x", None, [5], SamplingParams())
    assert processor.add_request("1_xyz", None, [5], SamplingParams()) == ["1_xyz"]
    with pytest.raises(ValueError, match="already in use"):
        processor.add_request("xyz", None, [5], SamplingParams(n=2))
    assert set(processor.requests) == {"abc", "x", "1_xyz"}


def test_reset_prefix_cache_makes_the_next_run_cold(llm):
    core, prompt = llm.engine.core, list(range(3, 3 + 70))  # four full blocks of 16
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    first = llm.generate([prompt], params)[0]
    hits = core.stats().prefix_cache_hit_tokens
    assert tokens(llm.generate([prompt], params)[0]) == tokens(first)
    assert core.stats().prefix_cache_hit_tokens - hits == 64
    core.reset_prefix_cache()
    hits = core.stats().prefix_cache_hit_tokens
    assert tokens(llm.generate([prompt], params)[0]) == tokens(first)
    assert core.stats().prefix_cache_hit_tokens == hits
    core.add_request(Request("busy", prompt, params))
    with pytest.raises(RuntimeError, match="idle engine"):
        core.reset_prefix_cache()
    while core.has_unfinished_requests():
        core.step()


def test_positions_reach_the_model_16_byte_aligned(tiny_model_dirs):
    # kernels specialize on pointer alignment: a positions view at an odd int64 offset compiled a
    # second variant mid-run on the GPU
    llm = LLM(str(tiny_model_dirs["llama"]))
    offsets = []
    rotary = llm.engine.core.runner.model.model.layers[0].self_attn.rotary_emb
    rotary.register_forward_pre_hook(lambda module, args: offsets.append(args[0].data_ptr() % 16))
    llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True))  # steps of 3 and 1 tokens
    assert offsets and set(offsets) == {0}


def test_num_cached_tokens_counts_the_prompt_found_in_the_prefix_cache(llm):
    prompt = list(range(400, 441))  # 41 tokens: two full 16-token blocks, then the one holding the last token
    params = SamplingParams(temperature=0, max_tokens=2)
    first, again = (llm.generate(prompt, params)[0] for _ in range(2))
    assert (first.num_cached_tokens, again.num_cached_tokens) == (0, 32)
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
