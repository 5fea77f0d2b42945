"""Load and abuse at once on the shared server: 256 concurrent streams across its three models while
bad requests of every kind arrive. No stream is lost, nothing answers 5xx, the API process's memory
stays flat."""
import asyncio
import json

import httpx

from tests.server.helpers import API_KEY

NUM_STREAMS = 256
MAX_TOKENS = 8


def rss_bytes() -> int:
    with open("/proc/self/status") as f:  # the server runs in this process
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def bad_requests(model: str) -> list[tuple[str, dict, bytes]]:
    """(path, headers, body) of each kind of bad input."""
    auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
    chat = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    return [
        ("/v1/chat/completions", auth, b'{"model": "x", "messages": [' + b'{"role": "user", "content": "aaaa"},' * 300_000
         + b'{"role": "user", "content": "end"}]}'),  # past the body limit
        ("/v1/chat/completions", auth, json.dumps({**chat, "messages": [{"role": "user", "content": "\ud800"}]}
                                                  ).encode()),  # a lone surrogate
        ("/v1/completions", auth, b'{"model": "%s", "prompt": "\\udfff", "max_tokens": 2}' % model.encode()),
        ("/v1/chat/completions", auth, json.dumps({**chat, "chat_template_kwargs": {
            "chat_template": "{% for i in range(10**9) %}x{% endfor %}"}}).encode()),  # a request's own template
        ("/v1/chat/completions", {**auth, "Authorization": "Bearer sk-wrong"}, json.dumps(chat).encode()),
        ("/v1/chat/completions", auth, b'{"model": '),  # not JSON
        ("/v1/chat/completions", auth, json.dumps({**chat, "n": 10**9}).encode()),
        ("/v1/chat/completions", auth, json.dumps({**chat, "max_tokens": -1}).encode()),
        ("/v1/completions", auth, json.dumps({"model": model, "prompt": [10**12], "max_tokens": 2}).encode()),
        ("/v1/chat/completions", auth, json.dumps({**chat, "model": "no-such-model"}).encode()),
    ]


async def stream(client: httpx.AsyncClient, model: str, i: int) -> tuple[int, str | None, bool]:
    body = {"model": model, "prompt": f"Story {i}: once upon a time", "max_tokens": MAX_TOKENS,
            "temperature": 0, "ignore_eos": True, "stream": True}
    chunks, finish, done = 0, None, False
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                assert "error" not in data, data
                for choice in data["choices"]:
                    finish = choice["finish_reason"] or finish
                chunks += 1
    return chunks, finish, done


async def abuse(client: httpx.AsyncClient, model: str, rounds: int) -> list[int]:
    statuses = []
    for _ in range(rounds):
        for path, headers, body in bad_requests(model):
            r = await client.post(path, content=body, headers=headers)
            statuses.append(r.status_code)
    return statuses


def test_256_streams_across_three_models_survive_bad_requests_of_every_kind(server, served_models):
    async def run():
        limits = httpx.Limits(max_connections=NUM_STREAMS + 16, max_keepalive_connections=NUM_STREAMS + 16)
        # the bad requests each on a fresh connection: on a reused keep-alive one, the server closing it for
        # idleness just as the next request goes out is a ReadError on the client's side (HTTP's own race)
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"},
                                     limits=limits, timeout=600) as client, \
                httpx.AsyncClient(base_url=server.url, limits=httpx.Limits(max_keepalive_connections=0),
                                  timeout=600) as attacker:
            streams = [stream(client, served_models[i % len(served_models)], i) for i in range(NUM_STREAMS)]
            attacks = [abuse(attacker, model, rounds=3) for model in served_models]
            return await asyncio.gather(asyncio.gather(*streams), asyncio.gather(*attacks))

    before = rss_bytes()
    results, attack_statuses = asyncio.run(run())
    grown = rss_bytes() - before
    assert len(results) == NUM_STREAMS
    assert all(done and finish == "length" and chunks >= 1 for chunks, finish, done in results)
    statuses = [s for per_model in attack_statuses for s in per_model]
    assert all(400 <= s < 500 for s in statuses), sorted(set(statuses))
    assert grown < 300 * 2**20, f"the API process grew by {grown / 2**20:.0f} MiB"
    ok = httpx.post(f"{server.url}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                    json={"model": served_models[0], "prompt": "Hi", "max_tokens": 2})
    assert ok.status_code == 200
