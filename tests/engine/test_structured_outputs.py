"""Structured outputs in the engine: whatever the weights, a constrained output parses and validates
(jsonschema) or matches its regex or choice exactly; constrained and free requests share a batch;
the sampler's bitmask masks exactly the tokens a reference unpacking of the bits says."""
import json
import re

import jsonschema
import pytest
import torch

from corral import LLM, SamplingParams
from corral.engine.sampler import apply_grammar_bitmask
from corral.engine.structured_output import GrammarError
from corral.sampling_params import SamplingParamsError, StructuredOutputsParams

SCHEMAS = {
    "flat": {"type": "object", "properties": {"name": {"type": "string", "pattern": "^[a-z]{1,6}$"},
                                              "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                              "ok": {"type": "boolean"}},
             "required": ["name", "age", "ok"], "additionalProperties": False},
    "nested": {"type": "object", "properties": {
        "user": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 9999},
                                                  "role": {"enum": ["admin", "guest"]}},
                 "required": ["id", "role"], "additionalProperties": False},
        "scores": {"type": "array", "items": {"type": "integer", "minimum": -5, "maximum": 5},
                   "minItems": 1, "maxItems": 4}},
        "required": ["user", "scores"], "additionalProperties": False},
    "pattern_and_anyof": {"type": "object", "properties": {
        "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        "value": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "null"},
                            {"enum": ["none", "some"]}]}},
        "required": ["code", "value"], "additionalProperties": False},
    "array_root": {"type": "array", "items": {"enum": [1, 2, 3, "x"]}, "minItems": 2, "maxItems": 5},
}
PROMPTS = [[5, 6, 7], [9, 9, 9, 9], [100, 3, 200]]


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def llm(request, tiny_model_dirs):
    return LLM(str(tiny_model_dirs[request.param]), max_model_len=512)


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_sampled_outputs_validate_against_their_json_schema_whatever_the_weights(llm, name):
    schema = SCHEMAS[name]
    params = [SamplingParams(temperature=1.0, max_tokens=200, seed=seed, structured_outputs={"json": schema})
              for seed in range(6)]
    for output in llm.generate(PROMPTS * 2, params):
        completion = output.outputs[0]
        assert completion.finish_reason == "stop", completion.text
        jsonschema.validate(json.loads(completion.text), schema)


def test_regex_and_choice_outputs_match_exactly(llm):
    pattern = r"[0-9]{3}-[a-z]{2,4}( ok)?"
    choices = ["yes", "no", "not sure"]
    for seed in range(6):
        by_regex, by_choice = llm.generate([[5, 6, 7]] * 2, [
            SamplingParams(temperature=1.0, max_tokens=30, seed=seed, structured_outputs={"regex": pattern}),
            SamplingParams(temperature=1.0, max_tokens=30, seed=seed, structured_outputs={"choice": choices})])
        assert re.fullmatch(pattern, by_regex.outputs[0].text)
        assert by_choice.outputs[0].text in choices


def test_json_object_mode_gives_an_object_whatever_the_weights(llm):
    params = [SamplingParams(temperature=1.0, max_tokens=120, seed=seed, structured_outputs={"json_object": True})
              for seed in range(6)]
    outputs = [o.outputs[0] for o in llm.generate(PROMPTS * 2, params)]
    assert all(o.text.startswith("{") for o in outputs)
    finished = [o for o in outputs if o.finish_reason == "stop"]  # a random model may run out of tokens inside a string
    assert finished and all(isinstance(json.loads(o.text), dict) for o in finished)


def test_an_ebnf_grammar_constrains_the_output(llm):
    grammar = 'root ::= "(" item ("," item){0,3} ")"\nitem ::= [a-c] | "zz"'
    for seed in range(4):
        params = SamplingParams(temperature=1.0, max_tokens=40, seed=seed, structured_outputs={"grammar": grammar})
        assert re.fullmatch(r"\((?:[a-c]|zz)(?:,(?:[a-c]|zz)){0,3}\)", llm.generate([[5, 6]], params)[0].outputs[0].text)


def test_constrained_and_free_requests_share_a_batch_and_the_free_ones_are_unchanged(llm):
    free = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, free)]
    constrained = SamplingParams(temperature=0, max_tokens=64, structured_outputs={"json": SCHEMAS["flat"]})
    mixed = llm.generate(PROMPTS + PROMPTS, [free] * 3 + [constrained] * 3)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == alone
    for o in mixed[3:]:
        jsonschema.validate(json.loads(o.outputs[0].text), SCHEMAS["flat"])


def test_constrained_steps_launched_ahead_of_the_host_give_the_same_outputs(tiny_model_dirs):
    """With async scheduling a constrained step's forward is launched before the step before is read;
    its bitmask follows that step's update. The outputs are those of the step-by-step engine."""
    params = [SamplingParams(temperature=t, max_tokens=120, seed=seed, structured_outputs={"json": SCHEMAS[name]})
              for name in ("nested", "pattern_and_anyof") for t, seed in ((0, None), (1.0, 3))]
    outputs = {}
    for async_scheduling in (True, False):
        llm = LLM(str(tiny_model_dirs["qwen3"]), max_model_len=512, async_scheduling=async_scheduling)
        launches = []
        launch = llm.engine.core.runner.launch
        llm.engine.core.runner.launch = lambda *a, **k: launches.append(k.get("previous")) or launch(*a, **k)
        outputs[async_scheduling] = [o.outputs[0].token_ids for o in llm.generate([[5, 6, 7]] * 4, params)]
        assert any(p is not None for p in launches) == async_scheduling
    assert outputs[True] == outputs[False]


def test_a_token_the_grammar_rejects_ends_the_request_and_is_logged(tiny_model_dirs, caplog):
    """What a sampler that failed to apply the bitmask would give: the grammar rejects the sampled token,
    the request ends on it, and the engine says so (a silent stop would look like a short answer)."""
    llm = LLM(str(tiny_model_dirs["qwen3"]), max_model_len=512)
    llm.engine.core.structured_output.bitmask = lambda requests, pinned: None  # the mask never reaches the sampler
    params = SamplingParams(temperature=1.0, seed=0, max_tokens=40, structured_outputs={"json": SCHEMAS["flat"]})
    with caplog.at_level("ERROR", logger="corral.engine.scheduler"):
        outputs = llm.generate([[5, 6, 7]] * 3, params)
    assert [len(o.outputs[0].token_ids) for o in outputs] == [1, 1, 1]
    rejected = [r for r in caplog.records if "does not allow the sampled token" in r.getMessage()]
    assert len(rejected) == 3


def test_a_grammar_that_can_only_end_ends_the_request_before_its_min_tokens(llm, caplog):
    """min_tokens holds back the stop tokens, but once the grammar allows nothing else the request stops
    on its complete output (before, every logit was -inf and the grammar rejected the token sampled)."""
    params = [SamplingParams(temperature=1.0, seed=seed, max_tokens=30, min_tokens=20,
                             structured_outputs={"choice": ["yes", "no"]}) for seed in range(4)]
    with caplog.at_level("ERROR", logger="corral.engine.scheduler"):
        outputs = [o.outputs[0] for o in llm.generate([[5, 6, 7]] * 4, params)]
    eos = llm.get_tokenizer().eos_token_id
    assert all(o.text in ("yes", "no") and o.finish_reason == "stop" and o.token_ids[-1] == eos
               for o in outputs), outputs
    assert not [r for r in caplog.records if "does not allow" in r.getMessage()]


@pytest.mark.parametrize("spec, match", [
    ({"json": "{not json"}, "cannot compile the json"),
    ({"json": {"type": "object", "properties": {"a": {"type": "no-such-type"}}}}, "cannot compile the json"),
    ({"regex": "([a-z"}, "cannot compile the regex"),
    ({"grammar": "root ::= undefined_rule"}, "cannot compile the grammar"),
])
def test_a_grammar_that_cannot_compile_is_refused_before_it_reaches_the_engine(llm, spec, match):
    with pytest.raises(GrammarError, match=match):
        llm.generate([[5, 6, 7]], SamplingParams(max_tokens=4, structured_outputs=spec))
    assert not llm.engine.has_unfinished_requests()


def test_structured_outputs_take_exactly_one_kind():
    with pytest.raises(SamplingParamsError, match="exactly one"):
        StructuredOutputsParams(json={"type": "object"}, regex="a")
    with pytest.raises(SamplingParamsError, match="exactly one"):
        StructuredOutputsParams()
    with pytest.raises(SamplingParamsError, match="choice"):
        StructuredOutputsParams(choice=[])
    with pytest.raises(SamplingParamsError, match="choice must be a list"):  # not the choice of its letters
        StructuredOutputsParams(choice="yes")
    with pytest.raises(SamplingParamsError, match="choice must be a list"):  # nor of its keys
        StructuredOutputsParams(choice={"yes": 1, "no": 2})


@pytest.mark.parametrize("rows", [[0, 2], [0, 1, 2, 3]])
@pytest.mark.parametrize("table", [100, 70])
def test_the_bitmask_masks_exactly_the_tokens_its_bits_forbid_and_the_padding_past_its_table(rows, table):
    torch.manual_seed(0)
    vocab = 100
    logits = torch.randn(4, vocab)
    bitmask = torch.randint(-2**31, 2**31 - 1, (4, (table + 31) // 32), dtype=torch.int32)
    masked = logits.clone()
    apply_grammar_bitmask(masked, bitmask, rows, table)
    for i in range(4):
        for t in range(vocab):
            allowed = i not in rows or (t < table and (int(bitmask[i, t // 32]) >> (t % 32)) & 1)
            assert masked[i, t] == (logits[i, t] if allowed else float("-inf"))


def test_the_grammar_table_stops_at_the_tokenizer_s_last_id_when_the_logits_are_wider(tiny_model_dirs):
    """xgrammar treats ids past the tokenizer's as special tokens and pays for each on every token taken
    (benchmarks.grammar_accept): a model whose logits are padded gets a table of the tokenizer's size."""
    from corral.engine.structured_output import StructuredOutputManager
    from corral.engine.tokenizer import load_tokenizer
    size = len(load_tokenizer(str(tiny_model_dirs["qwen3"])))
    manager = StructuredOutputManager(str(tiny_model_dirs["qwen3"]), 4096)
    assert size < 4096 and manager.compiler.table_size == manager.compiler.info.vocab_size == size
    assert manager.compiler.allocate_bitmask(2).shape == (2, (size + 31) // 32)


def test_constrained_outputs_of_a_model_with_padded_logits_validate_and_take_no_padding_id(tmp_path):
    from tests.tiny_models import build_model
    from corral.engine.tokenizer import load_tokenizer
    directory = build_model("llama", tmp_path / "padded", vocab_size=2048)
    size = len(load_tokenizer(str(directory)))
    llm = LLM(str(directory), max_model_len=512)
    params = [SamplingParams(temperature=1.0, max_tokens=120, seed=seed, structured_outputs={"json": SCHEMAS[name]})
              for name in sorted(SCHEMAS) for seed in range(3)]
    for output, p in zip(llm.generate([[5, 6, 7]] * len(params), params), params):
        assert max(output.outputs[0].token_ids) < size < 2048
        jsonschema.validate(json.loads(output.outputs[0].text), p.structured_outputs.json)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_bitmask_applied_on_the_gpu_masks_as_on_the_cpu(dtype):
    torch.manual_seed(0)
    vocab, rows, table = 151936, [0, 3, 5], 151669  # Qwen3's logits and tokenizer
    logits = torch.randn(8, vocab, dtype=dtype)
    for width in (vocab, table):
        bitmask = torch.randint(-2**31, 2**31 - 1, (8, (width + 31) // 32), dtype=torch.int32)
        on_cpu, on_gpu = logits.clone(), logits.cuda()
        apply_grammar_bitmask(on_cpu, bitmask, rows, width)
        apply_grammar_bitmask(on_gpu, bitmask.cuda(), rows, width)
        assert torch.equal(on_gpu.cpu(), on_cpu)


@pytest.mark.gpu
def test_constrained_outputs_on_the_gpu_validate_and_free_ones_in_the_batch_are_unchanged(tiny_model_dirs):
    llm = LLM(str(tiny_model_dirs["qwen3"]), max_model_len=512, device="cuda", dtype="float32")
    free = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    alone = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, free)]
    constrained = [SamplingParams(temperature=1.0, max_tokens=120, seed=seed, structured_outputs={"json": SCHEMAS[name]})
                   for name in sorted(SCHEMAS) for seed in range(2)]
    mixed = llm.generate(PROMPTS + [[5, 6, 7]] * len(constrained), [free] * 3 + constrained)
    assert [o.outputs[0].token_ids for o in mixed[:3]] == alone
    for o, p in zip(mixed[3:], constrained):
        jsonschema.validate(json.loads(o.outputs[0].text), p.structured_outputs.json)


@pytest.mark.gpu
def test_grammars_hold_b1_s_sampling_on_the_gpu(tiny_model_dirs, caplog):
    """B1's way of sampling (temperature, no seed: the one-pass sampler; bf16; CUDA graphs; each step
    launched ahead) with every request held to a grammar that cannot complete: each runs to its
    max_tokens, no sampled token rejected. An H100 run of constrained B1 at 7acfbe8 stopped every request
    at its first token."""
    llm = LLM(str(tiny_model_dirs["qwen3"]), max_model_len=512, device="cuda", dtype="bfloat16")
    never_done = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99}, "minItems": 2000}
    params = SamplingParams(temperature=0.6, max_tokens=48, ignore_eos=True, structured_outputs={"json": never_done})
    with caplog.at_level("ERROR", logger="corral.engine.scheduler"):
        outputs = llm.generate([[5 + i, 6, 7] for i in range(64)], params)
    assert not [r.getMessage() for r in caplog.records]
    assert [len(o.outputs[0].token_ids) for o in outputs] == [48] * 64


@pytest.mark.gpu
def test_the_bitmask_filled_into_pinned_buffers_is_xgrammar_s_own(tiny_model_dirs):
    import xgrammar as xgr

    from corral.engine.request import Request
    from corral.engine.structured_output import StructuredOutputManager
    manager = StructuredOutputManager(str(tiny_model_dirs["qwen3"]), 512)
    params = SamplingParams(structured_outputs={"json": SCHEMAS["nested"]})
    requests = [Request(f"r{i}", [1], params) for i in range(4)]
    for r in requests:
        manager.init_request(r)
    pinned, rows, _ = manager.bitmask(requests, pinned=True)
    plain = xgr.allocate_token_bitmask(4, manager.compiler.info.vocab_size)
    for i, r in enumerate(requests):
        r.grammar.matcher.fill_next_token_bitmask(plain, i)
    assert pinned.is_pinned() and rows == [0, 1, 2, 3]
    assert torch.equal(pinned, plain) and not torch.equal(plain, torch.full_like(plain, -1))


def test_smollm2_s_outputs_validate_against_every_schema(smollm2_dir):
    llm = LLM(str(smollm2_dir), max_model_len=512)
    names = sorted(SCHEMAS)
    params = [SamplingParams(temperature=1.0, max_tokens=160, seed=seed, structured_outputs={"json": SCHEMAS[name]})
              for name in names for seed in range(2)]
    prompts = [llm.get_tokenizer().encode(f"Write a {name.replace('_', ' ')} record as JSON:")
               for name in names for _ in range(2)]
    for output, p in zip(llm.generate(prompts, params), params):
        jsonschema.validate(json.loads(output.outputs[0].text), p.structured_outputs.json)
