"""Ollama's API with the official `ollama` Python client against a real server of the tiny random models (a 2048
context: the generic tool prompt is some 800 tokens on their tokenizer), behind an API key. References: the OpenAI
routes of the same server for the same conversation at temperature 0 (the one chat path, reached by another
dialect), the safetensors library for sizes and parameter counts, jsonschema for `format`, the loopback Hugging
Face hub of the source tests for /api/pull."""
import json
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.server.helpers import API_KEY, ServerThread, tool_models_config
from tests.sources.hub_server import FakeHFHub, Repo

ollama = pytest.importorskip("ollama")

HUB_REPO = "corral-test/tiny-llama"
PULL_MANIFEST = f'["tiny-pull"]\nhf = "{HUB_REPO}"\narchitecture = "LlamaForCausalLM"\nlicense = "MIT"\n'
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
# in the order the ollama client sends a tool's fields (the generic tool prompt shows them as they come)
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                            "parameters": {"type": "object", "required": ["city"], "properties": {
                                                "city": {"type": "string"}}}}}
FORECAST = {"type": "object", "properties": {
    "city": {"type": "string", "pattern": "^[A-Za-z]{1,10}$"}, "sky": {"type": "string", "enum": ["clear", "rain"]},
    "celsius": {"type": "integer", "minimum": -40, "maximum": 50}},
    "required": ["city", "sky", "celsius"], "additionalProperties": False}


@pytest.fixture(scope="module")
def hub(tool_models):
    with FakeHFHub({HUB_REPO: Repo.from_dir(tool_models["tiny-llama"])}) as running:
        yield running


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ollama-home")
    (home / "models").mkdir()
    (home / "models" / "pull.toml").write_text(PULL_MANIFEST)
    return home


@pytest.fixture(scope="module")
def server(tool_models, hub, home):
    with pytest.MonkeyPatch.context() as env:  # the store and the hub the server pulls from
        env.setenv("CORRAL_HOME", str(home))
        env.setenv("HF_ENDPOINT", hub.url)
        env.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "CORRAL_SOURCE"):
            env.delenv(var, raising=False)
        running = ServerThread(tool_models_config(tool_models, ["tiny-qwen3", "tiny-llama"], api_key=API_KEY)).start()
        yield running
        running.stop()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120)


@pytest.fixture(scope="module")
def openai_chat(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120).chat.completions


def openai_answer(openai_chat, model: str, messages=MESSAGES, **extra):
    return openai_chat.create(model=model, messages=messages, temperature=0, seed=7, max_tokens=24,
                              **extra).choices[0].message


# the root, versions, listings


def test_the_root_answers_as_ollama_does_without_a_key(server):
    assert httpx.get(server.url + "/").text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200


def test_api_routes_need_the_key_and_answer_in_ollama_s_shape(server):
    response = httpx.get(server.url + "/api/tags")
    assert response.status_code == 401 and set(response.json()) == {"error"}


def test_version_names_an_ollama_api_level_and_corral_s_own(server):
    body = httpx.get(server.url + "/api/version", headers={"Authorization": f"Bearer {API_KEY}"}).json()
    assert body["version"].count(".") == 2 and body["corral_version"]


def test_list_names_every_served_model_with_its_files_facts(client, tool_models):
    from safetensors import safe_open
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {"tiny-qwen3:latest", "tiny-llama:latest"}
    for name in ("tiny-qwen3", "tiny-llama"):
        weights = tool_models[name] / "model.safetensors"
        with safe_open(str(weights), "np") as f:
            count = sum(f.get_tensor(k).size for k in f.keys())
        entry = listed[f"{name}:latest"]
        assert entry.size == weights.stat().st_size and len(entry.digest) == 64
        assert entry.details.family == name.removeprefix("tiny-") and entry.details.format == "safetensors"
        assert entry.details.parameter_size == f"{count / 1e3:.2f}".rstrip("0").rstrip(".") + "K"
        assert entry.details.quantization_level == "F32"


def test_show_gives_the_template_context_length_and_capabilities(client, tool_models):
    qwen = client.show("tiny-qwen3:latest")
    assert "thinking" in qwen.capabilities and "tools" in qwen.capabilities
    assert qwen.modelinfo["qwen3.context_length"] == 2048 and qwen.modelinfo["general.architecture"] == "qwen3"
    assert qwen.template == (tool_models["tiny-qwen3"] / "chat_template.jinja").read_text()
    assert "thinking" not in client.show("tiny-llama").capabilities


def test_ps_lists_the_loaded_models_with_expiry_and_context(client):
    client.chat("tiny-qwen3", messages=MESSAGES, options={"num_predict": 1})
    loaded = {m.model: m for m in client.ps().models}
    assert "tiny-qwen3:latest" in loaded
    assert loaded["tiny-qwen3:latest"].context_length == 2048 and loaded["tiny-qwen3:latest"].size_vram == 0
    assert loaded["tiny-qwen3:latest"].expires_at.year == 9999  # served without keep_alive: kept


# chat and generate


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-llama"])
def test_a_chat_answer_equals_the_openai_route_s_answer(client, openai_chat, model):
    response = client.chat(model, messages=MESSAGES, options=GREEDY, think=False)
    reference = openai_chat.create(model=model, messages=MESSAGES, temperature=0, seed=7, max_tokens=24,
                                   extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert response.message.content == reference.choices[0].message.content
    assert response.done and response.done_reason == reference.choices[0].finish_reason
    assert response.eval_count == reference.usage.completion_tokens
    assert response.prompt_eval_count == reference.usage.prompt_tokens
    assert response.total_duration >= response.eval_duration > 0 and response.load_duration >= 0


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-llama"])
def test_a_streamed_chat_equals_the_unstreamed_answer(client, model):
    whole = client.chat(model, messages=MESSAGES, options=GREEDY)
    parts = list(client.chat(model, messages=MESSAGES, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].message.content == ""
    assert "".join(p.message.content or "" for p in parts) == whole.message.content
    assert "".join(p.message.thinking or "" for p in parts) == (whole.message.thinking or "")
    assert parts[-1].eval_count == whole.eval_count and parts[-1].done_reason == whole.done_reason


def test_num_predict_limits_eval_count(client):
    response = client.chat("tiny-llama", messages=MESSAGES, options={**GREEDY, "num_predict": 5})
    assert response.eval_count == 5 and response.done_reason == "length"


def test_a_stop_string_ends_the_answer_before_it(client):
    text = client.chat("tiny-llama", messages=MESSAGES, options=GREEDY).message.content
    stop = text[10:13]
    assert stop.strip()
    stopped = client.chat("tiny-llama", messages=MESSAGES, options={**GREEDY, "stop": [stop]})
    assert stopped.message.content == text[:text.index(stop)] and stopped.done_reason == "stop"


def test_sampling_options_reach_the_sampler(client, openai_chat):
    options = {"temperature": 0.8, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 11, "repeat_penalty": 1.2,
               "presence_penalty": 0.5, "frequency_penalty": 0.3, "num_predict": 16}
    response = client.chat("tiny-llama", messages=MESSAGES, options=options)
    reference = openai_chat.create(model="tiny-llama", messages=MESSAGES, temperature=0.8, top_p=0.9, seed=11,
                                   presence_penalty=0.5, frequency_penalty=0.3, max_tokens=16,
                                   extra_body={"top_k": 40, "min_p": 0.05, "repetition_penalty": 1.2})
    assert response.message.content == reference.choices[0].message.content


@pytest.mark.parametrize("model", ["tiny-qwen3", "tiny-llama"])
@pytest.mark.parametrize("stream", [False, True])
def test_format_with_a_json_schema_validates_whatever_the_weights(client, model, stream):
    for seed in range(2):
        kwargs = dict(messages=MESSAGES, format=FORECAST, options={"temperature": 1.0, "seed": seed,
                                                                   "num_predict": 200})
        if stream:
            text = "".join(p.message.content or "" for p in client.chat(model, stream=True, **kwargs))
        else:
            text = client.chat(model, **kwargs).message.content
        jsonschema.validate(json.loads(text), FORECAST)


def test_format_json_gives_a_json_object(client):
    text = client.generate("tiny-llama", prompt="A JSON object:", format="json",
                           options={"temperature": 1.0, "seed": 1, "num_predict": 200}).response
    assert isinstance(json.loads(text), dict)


def test_think_puts_qwen3_s_thinking_in_message_thinking(client, openai_chat):
    response = client.chat("tiny-qwen3", messages=MESSAGES, options=GREEDY, think=True)
    reference = openai_answer(openai_chat, "tiny-qwen3", extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert response.message.thinking == reference.reasoning_content and response.message.thinking
    assert (response.message.content or None) == reference.content


def test_think_on_a_model_without_thinking_is_refused(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("tiny-llama", messages=MESSAGES, think=True)
    assert e.value.status_code == 400 and "does not support thinking" in e.value.error


@pytest.mark.parametrize("stream", [False, True])
def test_tools_on_a_random_model_answer_as_the_openai_route_does(client, openai_chat, stream):
    kwargs = dict(messages=MESSAGES, tools=[WEATHER], options=GREEDY)
    if stream:
        parts = list(client.chat("tiny-llama", stream=True, **kwargs))
        content = "".join(p.message.content or "" for p in parts)
        calls = [c for p in parts for c in p.message.tool_calls or ()]
    else:
        message = client.chat("tiny-llama", **kwargs).message
        content, calls = message.content, list(message.tool_calls or ())
    reference = openai_answer(openai_chat, "tiny-llama", tools=[WEATHER])
    assert content == (reference.content or "")
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == \
        [(c.function.name, json.loads(c.function.arguments)) for c in reference.tool_calls or ()]


def test_a_tool_conversation_renders_as_the_openai_route_renders_it(client, openai_chat):
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    history = [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [call]},
               {"role": "tool", "content": "18 degrees", "tool_name": "get_weather"}]
    response = client.chat("tiny-llama", messages=history, tools=[WEATHER], options=GREEDY)
    openai_history = [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_0", "content": "18 degrees"}]
    reference = openai_answer(openai_chat, "tiny-llama", messages=openai_history, tools=[WEATHER])
    assert response.prompt_eval_count > 0 and response.message.content == (reference.content or "")


def test_a_raw_generate_answers_as_completions_do_and_returns_its_context(client, server):
    prompt = "The capital of France is"
    response = client.generate("tiny-llama", prompt=prompt, raw=True, options=GREEDY)
    http = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    reference = http.post("/v1/completions", json={"model": "tiny-llama", "prompt": prompt, "temperature": 0,
                                                   "seed": 7, "max_tokens": 24}).json()
    assert response.response == reference["choices"][0]["text"]
    prompt_ids = http.post("/tokenize", json={"model": "tiny-llama", "prompt": prompt}).json()["tokens"]
    assert list(response.context[:len(prompt_ids)]) == prompt_ids
    assert len(response.context) == len(prompt_ids) + response.eval_count
    again = client.generate("tiny-llama", prompt=" and", raw=True, context=response.context, options=GREEDY)
    assert again.prompt_eval_count == len(response.context) + len(
        http.post("/tokenize", json={"model": "tiny-llama", "prompt": " and", "add_special_tokens": False}
                  ).json()["tokens"])


def test_generate_with_a_system_uses_the_chat_template(client, openai_chat):
    response = client.generate("tiny-llama", prompt="Hi", system="Be brief.", options=GREEDY)
    reference = openai_answer(openai_chat, "tiny-llama", messages=[{"role": "system", "content": "Be brief."},
                                                                   {"role": "user", "content": "Hi"}])
    assert response.response == reference.content


def test_generate_renders_ollama_s_template_variables(client):
    template = "{{ if .System }}S: {{ .System }}\n{{ end }}U: {{ .Prompt }}\nA:"
    response = client.generate("tiny-llama", prompt="Hi", system="Brief", template=template, options=GREEDY)
    raw = client.generate("tiny-llama", prompt="S: Brief\nU: Hi\nA:", raw=True, options=GREEDY)
    assert response.response == raw.response and response.prompt_eval_count == raw.prompt_eval_count


# keep_alive and errors


def test_keep_alive_0_unloads_the_model_after_the_request(client):
    client.chat("tiny-llama", messages=MESSAGES, options={"num_predict": 2}, keep_alive=0)
    deadline = time.monotonic() + 20
    while any(m.model == "tiny-llama:latest" for m in client.ps().models) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "tiny-llama:latest" not in {m.model for m in client.ps().models}
    assert client.chat("tiny-llama", messages=MESSAGES, options={"num_predict": 2}).done  # loads again
    expiry = next(m for m in client.ps().models if m.model == "tiny-llama:latest").expires_at.year
    assert expiry == 9999  # a request without keep_alive is back to the served model's own (never)


def test_an_empty_request_loads_the_model_and_with_keep_alive_0_unloads_it(client):
    assert client.generate("tiny-llama").done_reason == "load"
    assert "tiny-llama:latest" in {m.model for m in client.ps().models}
    assert client.chat("tiny-llama", messages=[], keep_alive=0).done_reason == "unload"
    assert "tiny-llama:latest" not in {m.model for m in client.ps().models}
    assert client.chat("tiny-llama", messages=[]).done_reason == "load"


def test_chat_requests_are_counted_in_the_metrics_by_model(server, client):
    client.chat("tiny-qwen3", messages=MESSAGES, options={"num_predict": 1})
    metrics = httpx.get(server.url + "/metrics").text
    assert 'endpoint="/api/chat",model="tiny-qwen3",status="200"' in metrics


def test_a_duration_keep_alive_shows_in_ps(client):
    client.chat("tiny-qwen3", messages=MESSAGES, options={"num_predict": 1}, keep_alive="10m")
    entry = next(m for m in client.ps().models if m.model == "tiny-qwen3:latest")
    left = entry.expires_at.timestamp() - time.time()
    assert 590 < left <= 600
    client.chat("tiny-qwen3", messages=MESSAGES, options={"num_predict": 1}, keep_alive=-1)


def test_a_keep_alive_past_year_9999_shows_in_ps_as_never(client):
    client.chat("tiny-qwen3", messages=MESSAGES, options={"num_predict": 1}, keep_alive=1e300)
    try:
        entry = next(m for m in client.ps().models if m.model == "tiny-qwen3:latest")
        assert entry.expires_at.year == 9999
    finally:
        client.chat("tiny-qwen3", messages=MESSAGES, options={"num_predict": 1}, keep_alive=-1)


def test_a_nan_keep_alive_gets_400(server, client):
    body = '{"model": "tiny-qwen3", "messages": [{"role": "user", "content": "Hi"}], "keep_alive": NaN}'
    response = httpx.post(server.url + "/api/chat", content=body, timeout=60,
                          headers={"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"})
    assert response.status_code == 400 and "keep_alive" in response.json()["error"], response.text
    client.ps()


def test_an_unknown_model_is_404_with_ollama_s_words(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat("no-such-model:7b", messages=MESSAGES)
    assert e.value.status_code == 404 and e.value.error == 'model "no-such-model:7b" not found, try pulling it first'


def test_name_and_tag_forms_resolve_to_the_served_model(client):
    assert client.chat("tiny-llama:latest", messages=MESSAGES, options={"num_predict": 1}).done
    assert client.show("TINY-LLAMA").details.family == "llama"


@pytest.mark.parametrize("request_body, words", [
    ({"messages": [{"role": "user", "content": "Hi", "images": ["aGk="]}]}, "images are not supported"),
    ({"messages": MESSAGES, "options": {"temperature": -1}}, "temperature"),
    ({"messages": MESSAGES, "format": "yaml"}, "format must be"),
    ({"messages": MESSAGES, "keep_alive": "soon"}, "keep_alive"),
    ({"messages": MESSAGES, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ({"messages": [{"role": "robot", "content": "Hi"}]}, "role"),
    ({"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": "get_weather"}]}, *MESSAGES]},
     "messages.0.tool_calls.0.function"),
])
def test_bad_requests_get_400_with_an_error_string(server, request_body, words):
    response = httpx.post(server.url + "/api/chat", json={"model": "tiny-llama", **request_body},
                          headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert response.status_code == 400 and set(response.json()) == {"error"}, response.text
    assert words in response.json()["error"]


def test_embed_on_a_chat_model_says_it_does_not_support_embeddings(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.embed("tiny-llama", input="hello")
    assert e.value.status_code == 400 and e.value.error == 'model "tiny-llama" does not support embeddings'


# pull and delete


def test_pull_streams_progress_from_a_loopback_hub_into_the_store(client, hub, home, tool_models):
    from corral.store import ModelStore
    updates = list(client.pull(f"hf.co/{HUB_REPO}", stream=True))
    statuses = [u.status for u in updates]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    downloading = [u for u in updates if u.status.startswith("downloading")]
    assert downloading and downloading[-1].completed == downloading[-1].total > 0
    assert [u.completed for u in downloading] == sorted(u.completed for u in downloading)
    (copy,) = ModelStore(home / "models").models()
    assert copy.repo == HUB_REPO and hub.gets()
    assert (copy.path / "model.safetensors").read_bytes() == (tool_models["tiny-llama"] / "model.safetensors").read_bytes()
    client.delete(f"hf.co/{HUB_REPO}")
    assert ModelStore(home / "models").models() == []


def test_pull_by_a_manifest_name_in_ollama_s_form_and_delete_it(client, home):
    from corral.store import ModelStore
    assert client.pull("tiny:pull").status == "success"  # the manifest tiny-pull
    assert [m.manifest for m in ModelStore(home / "models").models()] == ["tiny-pull"]
    client.delete("tiny:pull")
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("tiny:pull")
    assert e.value.status_code == 404


def test_pull_of_an_unknown_name_is_404_before_any_progress(client):
    with pytest.raises(ollama.ResponseError) as e:
        list(client.pull("qwen3:4", stream=True))
    assert e.value.status_code == 404 and "did you mean qwen3-4b" in e.value.error


def test_pulling_a_served_model_succeeds_at_once(client):
    assert [u.status for u in client.pull("tiny-llama", stream=True)] == ["pulling manifest", "success"]


def test_delete_refuses_a_served_model(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("tiny-llama")
    assert e.value.status_code == 400 and "served" in e.value.error
