"""An engine that keeps dying: restarted after a growing delay, never given up on, reported by /health
while it fails, and waited for by the requests that arrive meanwhile."""
import os
import signal
import time

import httpx
import pytest

from corral.server.engine_lifecycle import restart_delay
from tests.server.helpers import ServerThread
from tests.tiny_models import build_model


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "not true in time"
        time.sleep(0.05)
    return value


@pytest.fixture
def server(tmp_path):
    from corral.server.config import build_config
    config = build_config([str(build_model("llama", tmp_path / "llama"))], served_names=["llama"],
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    running = ServerThread(config).start()
    yield running
    running.stop()


def health(server) -> tuple[int, dict]:
    r = httpx.get(f"{server.url}/health", timeout=10)
    return r.status_code, r.json()


def kill_when_ready(client) -> int:
    pid = wait_for(lambda: client.state == "ready" and client.pid)
    os.kill(pid, signal.SIGKILL)
    return pid


def test_the_restart_delay_is_none_after_one_death_then_doubles_up_to_its_cap():
    assert [restart_delay(n, 1.0, 60.0) for n in range(1, 10)] == [0, 1, 2, 4, 8, 16, 32, 60, 60]


def test_an_engine_that_keeps_dying_is_restarted_after_a_growing_delay_and_never_given_up(server):
    client = server.client("llama")
    client.restart_backoff = 0.1
    back_after = []
    for _ in range(7):  # past the six deaths that used to leave a model in error for good
        kill_when_ready(client)
        died = time.monotonic()
        wait_for(lambda: client.state == "restarting")
        wait_for(lambda: client.state == "ready", timeout=120)
        back_after.append(time.monotonic() - died)
    assert client.restarts == 7 and client.crashes == 7
    assert back_after[-1] >= 0.1 * 2 ** 5 and back_after[-1] > back_after[0] + 2.0, back_after
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "llama", "prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200


def test_health_reports_a_model_whose_engine_keeps_dying_until_the_crash_window_passes(server):
    client = server.client("llama")
    client.crash_window, client.restart_backoff = 20.0, 2.0  # long enough for a restart on a loaded machine
    kill_when_ready(client)
    wait_for(lambda: client.crashes == 1 and client.state == "ready")  # its death seen, and it is back
    status, body = health(server)
    assert status == 200 and body["status"] == "ok"
    assert body["models"]["llama"] | {"failing": False, "crashes": 1} == body["models"]["llama"]
    kill_when_ready(client)
    wait_for(lambda: client.state == "restarting")
    status, body = health(server)
    assert status == 503 and body["status"] == "unavailable"
    assert body["models"]["llama"]["state"] == "restarting"
    assert body["models"]["llama"]["failing"] is True and body["models"]["llama"]["crashes"] == 2
    wait_for(lambda: client.state == "ready", timeout=120)
    status, body = health(server)
    assert status == 200 and body["status"] == "degraded" and body["models"]["llama"]["failing"] is True
    body = wait_for(lambda: (b := health(server)[1])["models"]["llama"]["crashes"] == 0 and b, timeout=60)
    assert body["status"] == "ok" and body["models"]["llama"]["failing"] is False


def test_a_request_arriving_while_its_engine_restarts_waits_for_it_and_succeeds(server):
    client = server.client("llama")
    client.restart_backoff = 3.0
    kill_when_ready(client)
    kill_when_ready(client)  # the second death within the window: a 3 s wait before the restart
    wait_for(lambda: client.state == "restarting")
    sent = time.monotonic()
    r = httpx.post(f"{server.url}/v1/completions", json={"model": "llama", "prompt": "Hi", "max_tokens": 2}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 2 and time.monotonic() - sent > 1.0
