"""`corral serve` as a user runs it: a separate process, the default model, SIGTERM; and lazy loading
with keep_alive."""
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import ServerThread, free_port


def corral_command() -> list[str]:
    script = Path(sys.executable).parent / "corral"  # the console script of this environment
    return [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli"]


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"corral serve exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError("corral serve did not become healthy")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead
        return f.read().split()[2] != "Z"


def engine_pids(pid: int) -> list[int]:
    """The engine processes `corral serve` spawned (multiprocessing's spawn_main children)."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            children += [int(c) for c in f.read().split()]
    engines = []
    for child in children:
        with open(f"/proc/{child}/cmdline", "rb") as f:
            if b"spawn_main" in f.read():
                engines.append(child)
    return engines


def test_plain_corral_serve_serves_smollm2_and_sigterm_finishes_in_flight_requests_then_exits_0(smollm2_model_dir):
    if smollm2_model_dir is None:
        pytest.skip("smollm2-135m-instruct is not available")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in ("MODEL_NAME", "CORRAL_API_KEY", "SERVED_MODEL_NAME")}
    proc = subprocess.Popen(corral_command() + ["serve", "--host", "127.0.0.1", "--port", str(port),
                                                "--max-model-len", "512", "--kv-cache-memory", "64MiB"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(proc, url)
        models = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(m["id"], m["state"]) for m in models] == [("smollm2-135m-instruct", "ready")]
        [engine_pid] = engine_pids(proc.pid)
        answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "smollm2-135m-instruct", "temperature": 0, "max_tokens": 12,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}).json()
        assert "Paris" in answer["choices"][0]["message"]["content"]

        first_chunk, chunks = threading.Event(), []

        def stream():
            body = {"model": "smollm2-135m-instruct", "prompt": "Once upon a time", "max_tokens": 16,
                    "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        chunks.append(line)
                        first_chunk.set()

        reader = threading.Thread(target=stream)
        reader.start()
        assert first_chunk.wait(60)
        proc.send_signal(signal.SIGTERM)
        reader.join(60)
        assert chunks[-1] == "data: [DONE]"
        events = [json.loads(c[len("data:"):]) for c in chunks[:-1]]
        assert any(choice["finish_reason"] == "length" for e in events for choice in e["choices"])
        assert events[-1]["usage"]["completion_tokens"] == 16  # all 16 tokens arrived before the exit
        assert proc.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{url}/health")
        assert not alive(engine_pid)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_serve_exits_1_when_no_model_can_load(tmp_path):
    proc = subprocess.run(corral_command() + ["serve", str(tmp_path / "no-such-model"), "--host", "127.0.0.1",
                                              "--port", str(free_port())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "no model could be loaded" in proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def lifecycle_server(model_dirs, tmp_path_factory):
    """tiny-qwen3 preloaded, tiny-llama loaded on demand with keep_alive 1 s, and a model that cannot
    load; with the /health answers seen while starting."""
    from corral.server.config import build_config
    missing = tmp_path_factory.mktemp("gone") / "no-such-model"
    config = build_config([str(model_dirs["tiny-qwen3"]), str(model_dirs["tiny-llama"]), str(missing)],
                          served_names=["qwen", "llama", "broken"],
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    config.models[1].preload, config.models[1].keep_alive = False, 1.0
    server = ServerThread(config)
    server.thread.start()
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1][0] != 200):
        try:
            r = httpx.get(f"{server.url}/health", timeout=5)
            seen.append((r.status_code, r.json()))
        except httpx.HTTPError:
            time.sleep(0.05)
    yield server, seen
    server.stop()


def test_health_is_503_while_loading_then_200_with_each_models_state(lifecycle_server):
    _, seen = lifecycle_server
    status, first = seen[0]
    assert status == 503 and first["status"] == "loading" and first["models"]["qwen"]["state"] == "loading"
    status, last = seen[-1]
    assert status == 200 and {m: s["state"] for m, s in last["models"].items()} == {
        "qwen": "ready", "llama": "unloaded", "broken": "error"}


def test_a_model_that_cannot_load_shows_its_error_and_gets_503(lifecycle_server):
    server, _ = lifecycle_server
    models = {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}
    assert models["broken"]["state"] == "error" and "model broken" in models["broken"]["error"]
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "broken", "prompt": "Hi"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unavailable"
    ok = httpx.post(f"{server.url}/v1/completions", json={"model": "qwen", "prompt": "Hi", "max_tokens": 2})
    assert ok.status_code == 200


def test_a_lazy_model_loads_on_first_request_and_unloads_after_keep_alive(lifecycle_server):
    server, _ = lifecycle_server

    def state():
        return {m["id"]: m for m in httpx.get(f"{server.url}/v1/models").json()["data"]}["llama"]["state"]
    body = {"model": "llama", "prompt": "Hello", "max_tokens": 5, "temperature": 0}
    assert state() == "unloaded"
    first = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).json()
    pid = server.client("llama").pid
    deadline = time.monotonic() + 20
    while state() != "unloaded" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state() == "unloaded"
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    again = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120).json()
    assert again["choices"][0]["text"] == first["choices"][0]["text"]


def test_health_stays_200_after_keep_alive_unloads_the_only_model(model_dirs):
    # a Docker healthcheck must not mark an idle server unhealthy: the model loads again on demand
    from corral.server.config import build_config
    config = build_config([str(model_dirs["tiny-llama"])], served_names=["llama"],
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu",
                                          "keep_alive": 1.0})
    server = ServerThread(config)
    server.thread.start()
    try:
        deadline, health = time.monotonic() + 120, None
        while time.monotonic() < deadline:
            try:
                health = httpx.get(f"{server.url}/health", timeout=5)
                if health.json()["models"]["llama"]["state"] == "unloaded":
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert health.json()["models"]["llama"]["state"] == "unloaded"
        assert health.status_code == 200 and health.json()["status"] == "ok"
        r = httpx.post(f"{server.url}/v1/completions", json={"model": "llama", "prompt": "Hi", "max_tokens": 2},
                       timeout=120)
        assert r.status_code == 200
    finally:
        server.stop()
