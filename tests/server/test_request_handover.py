"""A request reaches its engine as soon as the API process has validated it, not when its response starts: in a
burst, a response's start waits its turn on the event loop behind every other response's work. A response that
never starts (its client gone first) still aborts its request."""
import asyncio
import json

import pytest

from tests.server.helpers import asgi_request, metric_value

ROUTES = {"/v1/completions": {"prompt": [5, 6, 7]},
          "/v1/chat/completions": {"messages": [{"role": "user", "content": "Hi"}]}}


def aborted(app) -> float:
    return metric_value(app.state.metrics.render().decode(), "corral_requests_total", model="q",
                        finish_reason="abort")


async def until(predicate, timeout: float = 60.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "not true in time"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("max_tokens", [200, 2])  # cut short; finished in the engine, never read
def test_the_engine_generates_before_the_response_starts_and_a_response_that_never_starts_aborts(
        tiny_model_dirs, tmp_path, path, max_tokens):
    from corral.server.api import create_app
    from corral.server.config import build_config
    steps = tmp_path / "steps.jsonl"
    config = build_config([str(tiny_model_dirs["qwen3"])], served_names=["q"],
                          model_defaults={"max_model_len": 256, "kv_cache_memory_bytes": "8MiB", "device": "cpu",
                                          "step_log": str(steps)})
    body = json.dumps({"model": "q", "max_tokens": max_tokens, "ignore_eos": True, "stream": True, **ROUTES[path]}).encode()

    def generated() -> list[dict]:
        lines = steps.read_text().splitlines() if steps.exists() else []
        return [json.loads(line) for line in lines]

    async def scenario():
        app = create_app(config)
        async with app.router.lifespan_context(app):
            client = app.state.registry.get("q")
            await client.wait_ready(240)
            response_started = asyncio.Event()

            async def send(message):  # the response's start is held: the event loop never gets to it
                if message["type"] == "http.response.start":
                    response_started.set()
                    await asyncio.Event().wait()

            before = aborted(app)
            scope, receive = asgi_request(path, body)
            task = asyncio.create_task(app(scope, receive, send))
            await until(lambda: sum(line["tokens"] for line in generated()) >= min(3, max_tokens)
                        and (max_tokens > 2 or sum(line["finished"] for line in generated()) == 1))
            assert response_started.is_set() and not task.done() and client.num_pending == 1
            task.cancel()  # the client is gone before its response started
            with pytest.raises(asyncio.CancelledError):
                await task
            await until(lambda: client.stats.num_running == 0 and client.stats.num_waiting == 0)
            assert client.num_pending == 0 and client.stats.kv_cache_usage == 0
            assert aborted(app) == before + 1  # its client got none of it

    asyncio.run(scenario())
    lines = generated()
    assert sum(line["added"] for line in lines) == 1
    tokens = sum(line["tokens"] for line in lines)
    assert (tokens < 200) if max_tokens == 200 else (tokens == 2)  # aborted before its end; or run to it
