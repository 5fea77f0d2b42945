"""step_log: each engine of a real server appends a JSON line per step, whose tokens add up to what the
clients were sent, whose idle time is the wait for work before a step, and which counts the requests the engine
took since the line before."""
import json
import time

import openai

from tests.server.helpers import ServerThread


def one_model_server(tiny_model_dirs, step_log) -> ServerThread:
    """A started server of the tiny Qwen3 model as "q" on the CPU, its engine's steps logged to `step_log`."""
    from corral.server.config import build_config
    config = build_config([str(tiny_model_dirs["qwen3"])], served_names=["q"],
                          model_defaults={"max_model_len": 256, "kv_cache_memory_bytes": "8MiB", "device": "cpu",
                                          "step_log": str(step_log)})
    return ServerThread(config).start()


def test_each_step_of_each_model_is_a_line_whose_tokens_add_up_to_the_completions(tiny_model_dirs, tmp_path):
    from corral.server.config import build_config
    path = tmp_path / "steps.jsonl"
    config = build_config([str(tiny_model_dirs["qwen3"]), str(tiny_model_dirs["llama"])], served_names=["q", "l"],
                          model_defaults={"max_model_len": 256, "kv_cache_memory_bytes": "8MiB", "device": "cpu",
                                          "step_log": str(path)})
    server = ServerThread(config).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        sent, started = {"q": 0, "l": 0}, time.time()
        for model, n in (("q", 5), ("l", 7), ("q", 3)):
            time.sleep(0.3)  # the engine waits for work: that wait is the next step's idle time
            answer = client.completions.create(model=model, prompt=[5, 6, 7], max_tokens=n, temperature=0,
                                               extra_body={"ignore_eos": True})
            sent[model] += answer.usage.completion_tokens
    finally:
        server.stop()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert {line["model"] for line in lines} == {"q", "l"}
    for model in ("q", "l"):
        steps = [line for line in lines if line["model"] == model]
        assert sum(line["tokens"] for line in steps) == sent[model] > 0
        assert all(line["step_s"] > 0 and line["running"] + line["waiting"] <= 1 for line in steps)
        assert max(line["idle_s"] for line in steps) > 0.2
        assert [line["t"] for line in steps] == sorted(line["t"] for line in steps)
        assert started < steps[-1]["at"] < time.time()
        assert sum(line["added"] for line in steps) == sum(line["finished"] for line in steps) == \
            (2 if model == "q" else 1)  # each request taken once and finished once
        assert all(0 < line["transit_s"] < 5 for line in steps if line["added"])
        assert all(0 <= line["kv_usage"] <= 1 and line["preemptions"] == 0 for line in steps)
        assert max(line["kv_usage"] for line in steps) > 0  # a request's prompt holds a block
        assert len({line["kv_blocks"] for line in steps}) == 1 and steps[0]["kv_blocks"] > 0  # a static cache


def test_a_step_log_in_a_folder_that_does_not_exist_is_refused_in_one_line(tiny_model_dirs, tmp_path, capsys):
    from corral.cli import main
    args = ["serve", str(tiny_model_dirs["qwen3"]), "--device", "cpu", "--step-log", str(tmp_path / "no" / "s.jsonl")]
    assert main(args) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its folder does not exist" in err[0]


def test_a_step_log_that_cannot_be_written_leaves_the_engine_serving(tiny_model_dirs):
    server = one_model_server(tiny_model_dirs, "/dev/full")  # every write fails: no space left
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        pid = server.registry.get("q").pid
        for _ in range(2):
            answer = client.completions.create(model="q", prompt=[5, 6, 7], max_tokens=3, temperature=0,
                                               extra_body={"ignore_eos": True})
            assert answer.usage.completion_tokens == 3
        assert server.registry.get("q").pid == pid and server.registry.get("q").restarts == 0
    finally:
        server.stop()


def test_the_time_a_model_slept_is_the_idle_time_of_its_next_step(tiny_model_dirs, tmp_path):
    import httpx

    path = tmp_path / "steps.jsonl"
    server = one_model_server(tiny_model_dirs, path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        client.completions.create(model="q", prompt=[5, 6, 7], max_tokens=2, temperature=0)
        assert httpx.post(f"{server.url}/v1/models/q/sleep").json()["state"] == "sleeping"
        time.sleep(0.6)
        before = len(path.read_text().splitlines())
        client.completions.create(model="q", prompt=[5, 6, 7], max_tokens=2, temperature=0)  # wakes it
    finally:
        server.stop()
    woken = [json.loads(line) for line in path.read_text().splitlines()[before:]]
    assert woken and woken[0]["idle_s"] > 0.6


def test_a_requests_time_to_the_engine_counts_from_the_server_receiving_it(tiny_model_dirs, tmp_path, monkeypatch):
    import asyncio

    import corral.server.serving_completion as serving_completion
    path = tmp_path / "steps.jsonl"
    sampling_params = serving_completion.sampling_params

    async def slow_sampling_params(*args, **kwargs):  # route work between the receipt and the hand-over
        await asyncio.sleep(0.4)
        return await sampling_params(*args, **kwargs)

    monkeypatch.setattr(serving_completion, "sampling_params", slow_sampling_params)
    server = one_model_server(tiny_model_dirs, path)
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        client.completions.create(model="q", prompt=[5, 6, 7], max_tokens=2, temperature=0)
    finally:
        server.stop()
    taken = [json.loads(line) for line in path.read_text().splitlines() if json.loads(line)["added"]]
    assert len(taken) == 1 and 0.4 <= taken[0]["transit_s"] < 5
