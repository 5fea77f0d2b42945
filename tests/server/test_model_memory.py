"""Several models on one device without a static split: a real server with a memory budget that holds two
of three tiny models (and a fourth that never fits), driven by the openai client: models load on their
first request, the least recently used idle ones make room, sleep and wake keep greedy answers, and the
load / unload / sleep / wake endpoints."""
import asyncio
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.server.helpers import ServerThread, error_of, reference_footprint
from tests.tiny_models import build_model

MAX_MODEL_LEN = 256
SMALL = ("tiny-a", "tiny-b", "tiny-c")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory-models")
    return {"tiny-a": build_model("qwen3", root / "a"), "tiny-b": build_model("llama", root / "b"),
            "tiny-c": build_model("llama", root / "c", seed=1),
            "too-big": build_model("llama", root / "big", hidden_size=256, intermediate_size=1024,
                                   num_hidden_layers=4)}


@pytest.fixture(scope="module")
def budget(model_dirs) -> int:
    """Room for any two of the small models, never all three."""
    sizes = sorted(reference_footprint(model_dirs[m], MAX_MODEL_LEN) for m in SMALL)
    budget = (sizes[1] + sizes[2] + sum(sizes)) // 2
    assert sizes[1] + sizes[2] < budget < sum(sizes) < reference_footprint(model_dirs["too-big"], MAX_MODEL_LEN)
    return budget


def serve(model_dirs, names, **server) -> ServerThread:
    from corral.server.config import build_config
    config = build_config([str(model_dirs[n]) for n in names], served_names=list(names), server=server,
                          model_defaults={"max_model_len": MAX_MODEL_LEN, "device": "cpu", "preload": False,
                                          "max_num_seqs": 8})
    return ServerThread(config).start()


@pytest.fixture(scope="module")
def server(model_dirs, budget):
    running = serve(model_dirs, [*SMALL, "too-big"], memory_budget_bytes=budget, request_load_timeout=60)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=120) as h:
        yield h


def async_client(server) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=120)


def ask(client, model: str, text: str = "Hello world", max_tokens: int = 8) -> str:
    answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}],
                                            max_tokens=max_tokens, temperature=0)
    return answer.choices[0].message.content


def states(http) -> dict[str, tuple[str, int]]:
    return {m["id"]: (m["state"], m["memory_bytes"]) for m in http.get("/v1/models").json()["data"]}


def unload_all(http):
    for name in SMALL:
        assert http.post(f"/v1/models/{name}/unload").json()["state"] == "unloaded"


class LoadedWatch:
    """Samples, every few milliseconds, the models holding memory in the server's registry."""

    def __init__(self, server):
        from corral.server.model_memory import memory_held
        self.registry, self.held = server.registry, memory_held
        self.most_loaded, self.most_bytes, self._stop = 0, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            held = [self.held(c, self.registry.memory) for c in self.registry if str(c.state) != "sleeping"]
            self.most_loaded = max(self.most_loaded, sum(1 for b in held if b))
            self.most_bytes = max(self.most_bytes, sum(held))
            time.sleep(0.003)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()


def test_a_model_loads_on_its_first_request_showing_loading_and_answers_as_offline(server, client, http, model_dirs):
    from corral import LLM, SamplingParams
    assert {n: s for n, (s, _) in states(http).items()} == {n: "unloaded" for n in [*SMALL, "too-big"]}
    seen = set()
    answer = {}
    thread = threading.Thread(target=lambda: answer.setdefault("text", ask(client, "tiny-a")))
    thread.start()
    while thread.is_alive():
        seen.add(states(http)["tiny-a"][0])
        time.sleep(0.01)
    thread.join()
    assert "loading" in seen
    state, held = states(http)["tiny-a"]
    assert state == "ready" and held > 0
    offline = LLM(str(model_dirs["tiny-a"]), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=8 << 20, device="cpu")
    prompt = offline.engine.tokenizer.apply_chat_template([{"role": "user", "content": "Hello world"}],
                                                           tokenize=False, add_generation_prompt=True)
    expected = offline.generate([prompt], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0].text
    assert answer["text"] == expected


def test_round_robin_traffic_is_all_served_with_never_more_than_two_loaded(server, client, http, budget):
    answers = {}
    with LoadedWatch(server) as watch:
        for _ in range(3):
            for name in SMALL:
                answers.setdefault(name, set()).add(ask(client, name))
    assert all(len(a) == 1 for a in answers.values())  # each model answers the same way after each eviction
    assert watch.most_loaded == 2 and watch.most_bytes <= budget
    assert sum(1 for s, _ in states(http).values() if s == "ready") == 2


def test_the_least_recently_used_idle_model_makes_room(server, client, http):
    unload_all(http)
    for name in ("tiny-a", "tiny-b", "tiny-a", "tiny-c"):  # b is used least recently when c comes
        ask(client, name)
    now = states(http)
    assert now["tiny-a"][0] == now["tiny-c"][0] == "ready"
    assert now["tiny-b"] == ("sleeping", 0)  # on CPU a sleeping engine holds no device memory
    ask(client, "tiny-b")  # now a is the least recently used
    now = states(http)
    assert now["tiny-a"][0] == "sleeping" and now["tiny-b"][0] == now["tiny-c"][0] == "ready"


def test_no_request_is_lost_while_models_load_and_make_room(server, http, budget):
    unload_all(http)

    async def one(aclient, name: str, i: int):
        answer = await aclient.chat.completions.create(
            model=name, messages=[{"role": "user", "content": f"Hello {i}"}], max_tokens=6, temperature=0)
        return name, i, answer.choices[0].message.content

    async def traffic():
        async with async_client(server) as aclient:
            return await asyncio.gather(*(one(aclient, SMALL[i % 3], i // 3 % 2) for i in range(24)))

    with LoadedWatch(server) as watch:
        results = asyncio.run(traffic())
    assert len(results) == 24 and all(text for _, _, text in results)
    by_prompt = {}
    for name, i, text in results:
        by_prompt.setdefault((name, i), set()).add(text)
    assert all(len(texts) == 1 for texts in by_prompt.values())
    assert watch.most_loaded <= 2 and watch.most_bytes <= budget


def test_concurrent_requests_to_a_loading_model_are_all_served(server, http):
    unload_all(http)

    async def burst():
        async with async_client(server) as aclient:
            return await asyncio.gather(*(aclient.chat.completions.create(
                model="tiny-c", messages=[{"role": "user", "content": "Hi"}], max_tokens=5, temperature=0)
                for _ in range(8)))

    answers = asyncio.run(burst())
    assert len({a.choices[0].message.content for a in answers}) == 1
    assert states(http)["tiny-c"][0] == "ready"


def test_a_model_that_can_never_fit_gets_503_naming_its_footprint_and_the_budget(server, client, http, budget):
    from corral.server.memory_planner import format_bytes
    with pytest.raises(openai.APIStatusError) as e:
        ask(client, "too-big")
    assert e.value.status_code == 503
    message = e.value.body["message"] if isinstance(e.value.body, dict) else str(e.value)
    assert "too-big" in message and f"memory budget of {format_bytes(budget)}" in message
    assert "weights" in message and "KV cache" in message
    assert ask(client, "tiny-a")  # the others are unaffected
    assert states(http)["too-big"][0] == "error"


def test_sleep_and_wake_keep_greedy_answers(server, client, http):
    before = ask(client, "tiny-b", "The capital of France", max_tokens=12)
    slept = http.post("/v1/models/tiny-b/sleep")
    assert slept.status_code == 200 and slept.json()["state"] == "sleeping" and slept.json()["memory_bytes"] == 0
    assert ask(client, "tiny-b", "The capital of France", max_tokens=12) == before  # the request wakes it
    assert states(http)["tiny-b"][0] == "ready"
    http.post("/v1/models/tiny-b/sleep")
    woke = http.post("/v1/models/tiny-b/wake")
    assert woke.json()["state"] == "ready" and woke.json()["memory_bytes"] > 0
    assert ask(client, "tiny-b", "The capital of France", max_tokens=12) == before


def test_load_endpoint_loads_and_health_shows_states_and_memory(server, http):
    unload_all(http)
    loaded = http.post("/v1/models/tiny-c/load")
    assert loaded.status_code == 200 and loaded.json()["state"] == "ready" and loaded.json()["memory_bytes"] > 0
    startup = loaded.json()["startup_seconds"]  # what the engine's start took, part by part
    parts = ("weights", "memory_profile", "kernels", "kv_cache", "cuda_graphs")
    assert set(startup) == {*parts, "engine"} and startup["weights"] > 0
    assert startup["engine"] >= sum(startup[p] for p in parts) - 0.005
    health = http.get("/health").json()["models"]
    assert health["tiny-c"]["state"] == "ready" and health["tiny-c"]["memory_bytes"] > 0
    assert health["tiny-a"]["state"] == "unloaded" and health["tiny-a"]["memory_bytes"] == 0


@pytest.mark.parametrize("action", ["load", "unload", "sleep", "wake"])
def test_the_endpoints_answer_404_for_an_unknown_model(http, action):
    error = error_of(http.post(f"/v1/models/no-such-model/{action}"), 404)
    assert "no-such-model" in error["message"] and error["code"] == "model_not_found"


def test_sleeping_a_model_that_is_not_loaded_is_a_conflict(http):
    unload_all(http)
    error = error_of(http.post("/v1/models/tiny-a/sleep"), 409)
    assert "unloaded" in error["message"]


def test_unload_waits_for_requests_in_flight_or_answers_409_when_asked_not_to(server, http):
    http.post("/v1/models/tiny-a/load")

    async def long_requests_then_unload():
        async def one(aclient, i):
            stream = await aclient.chat.completions.create(
                model="tiny-a", messages=[{"role": "user", "content": f"Tell {i}"}], max_tokens=200,
                temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            return [chunk.usage.completion_tokens async for chunk in stream if chunk.usage][-1]
        async with async_client(server) as aclient, httpx.AsyncClient(base_url=server.url, timeout=120) as h:
            running = [asyncio.create_task(one(aclient, i)) for i in range(6)]
            while not server.client("tiny-a").num_pending:
                await asyncio.sleep(0.005)
            refused = await h.post("/v1/models/tiny-a/unload", params={"wait": "false"})
            unloaded = await h.post("/v1/models/tiny-a/unload")
            return refused, unloaded, await asyncio.gather(*running)

    refused, unloaded, chunks = asyncio.run(long_requests_then_unload())
    error = error_of(refused, 409)
    assert "in flight" in error["message"]
    assert unloaded.status_code == 200 and unloaded.json()["state"] == "unloaded"
    assert all(n == 200 for n in chunks)  # every request ran to its end before the unload


def test_evicting_by_unloading_and_503_naming_the_models_in_use(model_dirs, budget):
    """A budget for one model, eviction by unloading, and a short load timeout."""
    running = serve(model_dirs, ["tiny-a", "tiny-b"], memory_budget_bytes=budget // 2 + 1, eviction="unload",
                    request_load_timeout=2)
    try:
        client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="none", max_retries=0, timeout=120)
        with httpx.Client(base_url=running.url, timeout=120) as h:
            for name in ("tiny-a", "tiny-b"):
                while h.post(f"/v1/models/{name}/load").status_code == 503:  # a load takes longer than 2 s here
                    pass
            assert {n: s for n, (s, _) in states(h).items()} == {"tiny-a": "unloaded", "tiny-b": "ready"}

        async def busy_then_other():
            async with async_client(running) as aclient:
                long = [asyncio.create_task(aclient.completions.create(
                    model="tiny-b", prompt=f"Once {i}", max_tokens=240, temperature=0,
                    extra_body={"ignore_eos": True})) for i in range(16)]  # b's KV holds one at a time: seconds
                while not running.client("tiny-b").num_pending:
                    await asyncio.sleep(0.005)
                try:
                    await aclient.chat.completions.create(model="tiny-a", max_tokens=3,
                                                          messages=[{"role": "user", "content": "Hi"}])
                except openai.APIStatusError as e:
                    return e, await asyncio.gather(*long)
                return None, await asyncio.gather(*long)

        refused, served = asyncio.run(busy_then_other())
        assert refused is not None and refused.status_code == 503
        assert "waiting for memory" in refused.message and "tiny-b" in refused.message
        assert all(c.usage.completion_tokens == 240 for c in served)
        with httpx.Client(base_url=running.url, timeout=120) as h:
            while h.post("/v1/models/tiny-a/load").status_code == 503:
                pass
            assert {n: s for n, (s, _) in states(h).items()} == {"tiny-a": "ready", "tiny-b": "unloaded"}
        assert ask(client, "tiny-a")  # once b is idle, a gets its room back
    finally:
        running.stop()


def test_an_engine_asleep_holds_no_weights_and_answers_the_same_awake(model_dirs):
    from corral import LLM, SamplingParams
    from corral.engine.sleep import memory_held
    llm = LLM(str(model_dirs["tiny-b"]), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=4 << 20, device="cpu")
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    prompt = "The capital of France is Paris. " * 6
    before = llm.generate([prompt], params)[0].outputs[0].token_ids
    assert llm.generate([prompt], params)[0].num_cached_tokens > 0  # the prefix cache holds the prompt
    core = llm.engine.core
    awake = memory_held(core)
    core.sleep()
    asleep = memory_held(core)
    assert awake.weights_bytes > 0 and awake.kv_cache_bytes > 0
    assert (asleep.weights_bytes, asleep.kv_cache_bytes) == (0, 0)
    core.wake()
    assert memory_held(core) == awake
    again = llm.generate([prompt], params)[0]
    assert again.outputs[0].token_ids == before
    assert again.num_cached_tokens == 0  # the KV cache came back empty: the prefix cache forgot the prompt


@pytest.mark.parametrize("server_settings, host_budget", [
    ({}, "half"), ({"sleep_memory_bytes": "3GiB"}, 3 << 30), ({"eviction": "unload"}, None)])
def test_sleeping_weights_get_half_the_host_memory_unless_told(tiny_model_dirs, server_settings, host_budget):
    from corral.server.config import build_config
    from corral.server.model_memory import ModelMemory, host_memory
    config = build_config([str(tiny_model_dirs["qwen3"])], server={"memory_budget_bytes": "1GiB", **server_settings},
                          model_defaults={"device": "cpu"})
    planner = ModelMemory.from_config(config, {}).planner
    assert planner.host_budget_bytes == (host_memory() // 2 if host_budget == "half" else host_budget)


def test_a_load_takes_the_engine_process_started_ahead_and_another_starts_behind_it(server, client, http):
    """Under a budget models load on demand: a spare engine process (torch imported, no model) waits, a load
    hands it its model instead of spawning one, and a new spare starts."""
    spares = server.registry.spares
    unload_all(http)

    def waiting_spare():
        deadline = time.monotonic() + 60
        while not (spares._spares and spares._spares[0].process.is_alive()):
            assert time.monotonic() < deadline, "no spare engine process started"
            time.sleep(0.05)
        return spares._spares[0].process.pid

    spare_pid = waiting_spare()
    first = ask(client, "tiny-b")
    assert server.registry.clients["tiny-b"].engine.pid == spare_pid
    assert waiting_spare() != spare_pid
    assert http.post("/v1/models/tiny-b/unload").json()["state"] == "unloaded"
    assert ask(client, "tiny-b") == first  # a spare serves the model as its first engine did


def test_sleeping_by_hand_past_the_host_budget_for_sleeping_models_is_a_conflict(model_dirs, budget):
    running = serve(model_dirs, ["tiny-a"], memory_budget_bytes=budget, sleep_memory_bytes="1KiB")
    try:
        with httpx.Client(base_url=running.url, timeout=120) as http:
            assert http.post("/v1/models/tiny-a/load").json()["state"] == "ready"
            error = error_of(http.post("/v1/models/tiny-a/sleep"), 409)
            assert "sleep_memory" in error["message"] and "tiny-a" in error["message"]
            assert states(http)["tiny-a"][0] == "ready"
    finally:
        running.stop()
