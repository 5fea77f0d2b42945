"""A chat template is a program: the server runs one that a request brings only when its operator trusts
requests (--trust-request-chat-template), and no template renders for longer than a bound."""
import time

import httpx
import pytest

from tests.server.helpers import CHAT, GOOD, ServerThread, error_of

MODEL = GOOD["model"]
# 10**9 loop iterations: half a minute of CPU in 85 bytes
LOOPING = "{% for i in range(100000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}x"


@pytest.fixture(scope="module")
def trusting_server(model_dirs):
    from corral.server.config import build_config
    config = build_config([str(model_dirs["tiny-llama"])], served_names=[MODEL],
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    config.trust_request_chat_template = True
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def trusting(trusting_server):
    with httpx.Client(base_url=trusting_server.url, timeout=120) as client:
        yield client


@pytest.mark.parametrize("path, extra, param", [
    (CHAT, {"chat_template_kwargs": {"chat_template": LOOPING}}, "chat_template_kwargs"),
    (CHAT, {"chat_template": LOOPING}, "chat_template"),
    ("/tokenize", {"chat_template": LOOPING}, "chat_template"),
])
def test_a_request_chat_template_is_refused_by_default(http, path, extra, param):
    started = time.monotonic()
    error = error_of(http.post(path, json={**GOOD, **extra}), 400)
    assert error["param"] == param and "--trust-request-chat-template" in error["message"]
    assert time.monotonic() - started < 2


def test_a_trusted_request_chat_template_is_rendered(trusting):
    template = "{{ messages[0].content }}!"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "chat_template": template}
    rendered = trusting.post("/tokenize", json=body).json()["tokens"]
    assert rendered == trusting.post("/tokenize", json={"model": MODEL, "prompt": "Hi!"}).json()["tokens"]
    r = trusting.post(CHAT, json={**GOOD, "chat_template_kwargs": {"chat_template": template}})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(rendered)


@pytest.mark.parametrize("path", [CHAT, "/tokenize"])
def test_a_template_that_renders_too_long_is_cut_off_with_400(trusting, path):
    started = time.monotonic()
    error = error_of(trusting.post(path, json={**GOOD, "chat_template": LOOPING}), 400)
    assert error["param"] == "chat_template" and "took more than" in error["message"]
    assert time.monotonic() - started < 10
    assert trusting.post(CHAT, json=GOOD).status_code == 200
