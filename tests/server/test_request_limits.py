"""One request cannot take the API process down: bodies past --max-request-size get 413 before they are
read, prompts longer than the context can hold are refused without tokenizing them, tokenizer work runs a
few at a time, and text no tokenizer can encode gets a 400."""
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from tests.server.helpers import API_KEY, CHAT, GOOD, error_of

MODEL = GOOD["model"]
HUGE_PROMPT = "Hello world! " * 250_000  # 3.25 MB: under the 4 MiB body limit; tokenizing it took 500 MiB


@pytest.fixture
def still_serving(http):
    yield
    r = http.post(CHAT, json=GOOD)
    assert r.status_code == 200, r.text


class TokenizerSpy:
    """The model's tokenizer, counting encode calls and how many run at once."""

    def __init__(self, tokenizer, delay: float = 0.0):
        self._tokenizer, self._delay, self._lock = tokenizer, delay, threading.Lock()
        self.calls = self.running = self.most_at_once = 0

    def encode(self, *args, **kwargs):
        with self._lock:
            self.calls += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self._delay)
            return self._tokenizer.encode(*args, **kwargs)
        finally:
            with self._lock:
                self.running -= 1

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


@pytest.fixture
def spy(server, http):
    def install(delay: float = 0.0) -> TokenizerSpy:
        http.post("/tokenize", json={"model": MODEL, "prompt": "Hi"})  # loaded, so input_processor exists
        inputs = server.client(MODEL).input_processor
        installed.append((inputs, inputs.tokenizer))
        inputs.tokenizer = TokenizerSpy(inputs.tokenizer, delay)
        return inputs.tokenizer
    installed = []
    yield install
    for inputs, tokenizer in installed:
        inputs.tokenizer = tokenizer


class PeakMemory:
    """The rise of this process's resident memory (the server runs in it) over a block, sampled."""

    def __enter__(self):
        self.process, self.done = psutil.Process(), threading.Event()
        self.base = self.peak = self.process.memory_info().rss
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.done.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.rise_mib = (self.peak - self.base) / 2**20


def raw_post(server, path: str, head: dict, parts: list[bytes]) -> tuple[int, bytes]:
    """POST over a plain socket, sending `parts` and then reading the answer until the server closes."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as s:
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Authorization: Bearer {API_KEY}",
                 "Content-Type: application/json", *(f"{k}: {v}" for k, v in head.items())]
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        for part in parts:
            s.sendall(part)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status = int(answer.split(b" ", 2)[1])
    return status, answer.partition(b"\r\n\r\n")[2]


def test_a_body_declared_larger_than_the_limit_gets_413_before_it_is_sent(server, still_serving):
    started = time.monotonic()
    status, body = raw_post(server, CHAT, {"Content-Length": 50 << 20}, [b'{"model": "tiny-llama", "messages": ['])
    assert status == 413 and b'"request_too_large"' in body and b"invalid_request_error" in body
    assert time.monotonic() - started < 5  # answered without waiting for the 50 MB


def test_a_chunked_body_gets_413_once_it_passes_the_limit(server, still_serving):
    limit, piece = server.config.max_request_bytes, b" " * (256 << 10)
    assert limit % len(piece) == 0
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] * (limit // len(piece))
    # the byte past the limit comes last: the server reads all that is sent, so it closes cleanly
    status, body = raw_post(server, CHAT, {"Transfer-Encoding": "chunked"}, [*chunks, b"1\r\n{\r\n"])
    assert status == 413 and b'"request_too_large"' in body


def test_a_body_under_the_limit_is_served(http):
    r = http.post(CHAT, json={**GOOD, "user": "x" * (1 << 20)})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", {"model": MODEL, "prompt": HUGE_PROMPT, "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ["Hi", HUGE_PROMPT], "max_tokens": 1}, "prompt"),
    (CHAT, {**GOOD, "messages": [{"role": "user", "content": HUGE_PROMPT}]}, "messages"),
    ("/tokenize", {"model": MODEL, "prompt": HUGE_PROMPT}, "prompt"),
    ("/tokenize", {"model": MODEL, "messages": [{"role": "user", "content": HUGE_PROMPT}]}, "messages"),
])
def test_a_prompt_longer_than_the_context_can_hold_is_refused_without_tokenizing_it(http, spy, still_serving,
                                                                                    path, body, param):
    tokenizer = spy()
    with PeakMemory() as memory:
        error = error_of(http.post(path, json=body), 400)
    assert error["code"] == "context_length_exceeded" and error["param"] == param
    assert tokenizer.calls == 0
    assert memory.rise_mib < 100, f"the API process grew by {memory.rise_mib:.0f} MiB"


def test_tokenization_runs_a_few_requests_at_a_time(server, http, spy):
    from corral.server.limits import MAX_CONCURRENT_TOKENIZATIONS
    tokenizer = spy(delay=0.3)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: http.post("/tokenize", json={"model": MODEL, "prompt": f"Hi {i}"}),
                                range(8)))
    assert [r.status_code for r in answers] == [200] * 8
    assert tokenizer.calls == 8 and tokenizer.most_at_once == MAX_CONCURRENT_TOKENIZATIONS


@pytest.mark.parametrize("path, body, param", [
    (CHAT, {**GOOD, "messages": [{"role": "user", "content": "Hi \ud800"}]}, "messages.0.content"),
    (CHAT, {**GOOD, "messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
     "messages.0.content"),
    (CHAT, {**GOOD, "messages": [{"role": "user", "content": "Hi", "name": "\ud800"}]}, "messages.0"),
    (CHAT, {**GOOD, "chat_template_kwargs": {"x": "\ud800"}}, "chat_template_kwargs"),
    (CHAT, {**GOOD, "stop": ["\ud800"]}, "stop"),
    (CHAT, {**GOOD, "model": "\ud800"}, "model"),
    ("/v1/completions", {"model": MODEL, "prompt": "Hi \ud800", "max_tokens": 1}, "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": ["Hi", "\ud800"], "max_tokens": 1}, "prompt"),
    ("/tokenize", {"model": MODEL, "prompt": "\ud800"}, "prompt"),
    ("/tokenize", {"model": MODEL, "messages": [{"role": "user", "content": "\ud800"}]}, "messages.0.content"),
])
def test_a_lone_surrogate_gets_400_naming_the_parameter(http, still_serving, path, body, param):
    content = json.dumps(body).encode()  # "\ud800" as JSON writes it (httpx's json= cannot encode it)
    error = error_of(http.post(path, content=content, headers={"Content-Type": "application/json"}), 400)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "surrogate" in error["message"]
