"""A request's outputs on their way from the engine's pipe to its stream: a stream that keeps up gets each
step's delta on its own; one that falls behind gets the unread deltas as one, with nothing lost or reordered."""
import asyncio

import pytest

from corral import SamplingParams
from corral.engine.output_processor import OutputProcessor
from corral.outputs import EngineCoreOutput, TokenLogprob
from corral.server.errors import BadRequestError
from corral.server.output_collector import RequestOutputCollector


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dirs):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model_dirs["qwen3"])


def _steps(tokenizer):
    """A sentence as an engine sends it, a token per step, with logprobs; the last step ends it."""
    ids = tokenizer.encode("Streams that fall behind catch up in one chunk.", add_special_tokens=False)
    return [EngineCoreOutput("r", [t], [TokenLogprob(t, -0.1 * i, 1)], "length" if i == len(ids) - 1 else None)
            for i, t in enumerate(ids)]


def _outputs(tokenizer, delta: bool):
    processor = OutputProcessor(tokenizer)
    processor.add_request("r", None, [1, 2], SamplingParams(max_tokens=64, logprobs=0), delta=delta)
    for step in _steps(tokenizer):
        yield from processor.process([step])[0]


def test_deltas_put_while_unread_arrive_as_one_output_equal_to_the_whole_completion(tokenizer):
    collector = RequestOutputCollector()
    for output in _outputs(tokenizer, delta=True):
        collector.put(output)
    merged = asyncio.run(collector.get())
    whole = list(_outputs(tokenizer, delta=False))[-1]
    assert merged.finished and whole.finished
    got, want = merged.outputs[0], whole.outputs[0]
    assert got.text == want.text and got.token_ids == want.token_ids
    assert got.logprobs == want.logprobs and got.cumulative_logprob == pytest.approx(want.cumulative_logprob)
    assert got.finish_reason == "length"


def test_a_reader_that_keeps_up_gets_every_delta_on_its_own(tokenizer):
    async def read_each():
        collector, seen = RequestOutputCollector(), []
        for output in _outputs(tokenizer, delta=True):
            collector.put(output)
            seen.append(await collector.get())
        return seen

    seen = asyncio.run(read_each())
    assert [len(o.outputs[0].token_ids) for o in seen] == [1] * len(_steps(tokenizer))
    assert [o.finished for o in seen] == [False] * (len(seen) - 1) + [True]


def test_a_reader_waits_for_the_next_delta(tokenizer):
    async def late_put():
        collector = RequestOutputCollector()
        first = next(_outputs(tokenizer, delta=True))
        asyncio.get_running_loop().call_later(0.05, collector.put, first)
        return await asyncio.wait_for(collector.get(), 5)

    assert asyncio.run(late_put()).outputs[0].token_ids == _steps(tokenizer)[0].new_token_ids


def test_an_error_replaces_the_unread_deltas_and_outlasts_later_ones(tokenizer):
    collector = RequestOutputCollector()
    outputs = list(_outputs(tokenizer, delta=True))
    collector.put(outputs[0])
    collector.put(BadRequestError("the prompt is too long", param="prompt"))
    collector.put(outputs[1])
    assert isinstance(asyncio.run(collector.get()), BadRequestError)


def test_sequences_of_an_n_request_merge_by_index(tokenizer):
    processor = OutputProcessor(tokenizer)
    children = processor.add_request("r", None, [1, 2], SamplingParams(max_tokens=8, n=2), delta=True)
    collector = RequestOutputCollector()
    ids = tokenizer.encode("one two three", add_special_tokens=False)
    for step, token in enumerate(ids):
        finish = "length" if step == len(ids) - 1 else None
        # sequence 1 skips the first step's output (it is behind by a token), so deltas differ in their sequences
        outs = [EngineCoreOutput(children[0], [token], None, finish)]
        if step:
            outs.append(EngineCoreOutput(children[1], [token], None, finish))
        for output in processor.process(outs)[0]:
            collector.put(output)
    merged = asyncio.run(collector.get())
    by_index = {c.index: c.token_ids for c in merged.outputs}
    assert by_index == {0: ids, 1: ids[1:]}
    assert merged.finished
