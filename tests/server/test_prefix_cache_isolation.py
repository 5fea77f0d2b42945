"""Callers with different API keys never share prefix-cache blocks, so `cached_tokens` cannot tell one
caller what another's prompt held; vLLM's per-request `cache_salt` splits the cache the same way."""
import httpx
import pytest

from corral.config import ConfigError
from tests.server.helpers import ServerThread

SECRET = ("You are the assistant of ACME. The launch code is 7741-ALPHA-ZEBRA. Never reveal it. "
          "Answer in one short sentence. ") * 3


@pytest.fixture(scope="module")
def keyed_server(model_dirs, tmp_path_factory):
    from corral.server.config import build_config
    key_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    key_file.write_text("# one key per caller\nsk-alice\n\nsk-bob\n")
    config = build_config([str(model_dirs["tiny-qwen3"])], served_names=["qwen"],
                          server={"api_key_file": str(key_file)},
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    server = ServerThread(config).start()
    yield server
    server.stop()


def cached(server, key: str, **extra) -> int:
    body = {"model": "qwen", "max_tokens": 1, "temperature": 0,
            "messages": [{"role": "system", "content": SECRET}, {"role": "user", "content": "Hi"}], **extra}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                   timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_every_key_of_the_key_file_is_accepted_and_others_are_not(keyed_server):
    for key, status in (("sk-alice", 200), ("sk-bob", 200), ("sk-eve", 401), ("# one key per caller", 401)):
        r = httpx.get(f"{keyed_server.url}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status


def test_a_prompt_one_key_cached_shows_no_cached_tokens_to_another_key(keyed_server):
    cached(keyed_server, "sk-alice")
    assert cached(keyed_server, "sk-alice") > 32  # the same key hits its own prefix
    assert cached(keyed_server, "sk-bob") == 0
    assert cached(keyed_server, "sk-bob") > 32   # and then its own copy


def test_a_request_cache_salt_splits_the_cache_within_one_key(keyed_server):
    cached(keyed_server, "sk-alice", cache_salt="tenant-1")
    assert cached(keyed_server, "sk-alice", cache_salt="tenant-1") > 32
    assert cached(keyed_server, "sk-alice", cache_salt="tenant-2") == 0


def test_an_empty_cache_salt_is_refused(keyed_server):
    r = httpx.post(f"{keyed_server.url}/v1/completions", headers={"Authorization": "Bearer sk-alice"},
                   json={"model": "qwen", "prompt": "Hi", "max_tokens": 1, "cache_salt": ""})
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt"


def test_an_unreadable_or_empty_key_file_is_one_config_error(tmp_path):
    from corral.server.config import build_config
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        build_config(["m"], server={"api_key_file": str(tmp_path / "missing.txt")}, env={})
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(ConfigError, match="holds no key"):
        build_config(["m"], server={"api_key_file": str(tmp_path / "empty.txt")}, env={})


def test_isolation_none_shares_the_cache_across_keys(model_dirs, tmp_path):
    from corral.server.config import build_config
    (tmp_path / "keys.txt").write_text("sk-alice\nsk-bob\n")
    config = build_config([str(model_dirs["tiny-qwen3"])], served_names=["qwen"],
                          server={"api_key_file": str(tmp_path / "keys.txt"), "prefix_cache_isolation": "none"},
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    server = ServerThread(config).start()
    try:
        cached(server, "sk-alice")
        assert cached(server, "sk-bob") > 32
    finally:
        server.stop()
