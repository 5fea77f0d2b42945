"""Shared by the server tests (and the sources tests that serve): a real server in a thread, the API key
it is given, the check that a response is an OpenAI-style error, and a tiny model's memory footprint."""
import asyncio
import json
import socket
import threading
import time
from pathlib import Path

import httpx

API_KEY = "test-key"
CHAT = "/v1/chat/completions"
GOOD = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving create_app(config) on a free loopback port, in a background thread."""

    def __init__(self, config):
        import uvicorn

        from corral.server.api import create_app
        config.host, config.port = "127.0.0.1", free_port()
        self.config = config
        self.app = create_app(config)
        self.registry = self.app.state.registry
        self.url = f"http://127.0.0.1:{config.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host=config.host, port=config.port,
                                                    log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="uvicorn")

    def start(self, timeout: float = 240.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"{self.url}/health", timeout=5)
                if r.status_code == 200 or (r.status_code == 503 and r.json()["status"] == "unavailable"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the server did not become healthy within {timeout} s")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)

    def client(self, model: str):
        return self.registry.get(model)


def asgi_request(path: str, body: bytes):
    """The ASGI scope and receive of a POST whose client then waits (never disconnects on its own)."""
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]}
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # never a disconnect: a test leaves by cancelling the request

    return scope, receive


def metric_value(text: str, name: str, **labels) -> float:
    """A Prometheus sample's value in an exposition `text` (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text
    return body["error"]


def reference_footprint(model_dir: Path, max_model_len: int) -> int:
    """A CPU model's memory as the files say: weights as stored (float32, as served on CPU), the layers'
    one float32 rotary table, and the KV cache of max_model_len tokens."""
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    rotary = config["max_position_embeddings"] * head_dim * 4
    kv = max_model_len * 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 4
    return sum(f.stat().st_size for f in model_dir.glob("*.safetensors")) + rotary + kv


def tool_models_config(tool_models: dict[str, Path], names: list[str] | None = None, **server):
    """A serve config of the tiny tool-calling models (the `tool_models` fixture) on the CPU, small KV caches."""
    from corral.server.config import build_config
    names = list(tool_models) if names is None else names
    return build_config([str(tool_models[n]) for n in names], served_names=names, server=server,
                        model_defaults={"max_model_len": 2048, "kv_cache_memory_bytes": "32MiB", "device": "cpu"})
