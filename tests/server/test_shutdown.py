"""SIGTERM with requests still running past --shutdown-timeout: each ends with a 503 (a stream with an
error event and [DONE]), none is cut off mid-body, and the log holds no traceback."""
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.server.helpers import free_port
from tests.tiny_models import build_model


def serve(model_dir: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    script = Path(sys.executable).parent / "corral"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "corral.cli"]
    proc = subprocess.Popen(command + ["serve", str(model_dir), "--served-model-name", "llama", "--host", "127.0.0.1",
                                       "--port", str(port), "--device", "cpu", "--max-model-len", "512",
                                       "--kv-cache-memory", "16MiB", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("corral serve did not become healthy")


def test_requests_running_at_the_end_of_the_shutdown_grace_end_with_503_not_cut_off(tmp_path):
    # one sequence at a time: eight 480-token streams take seconds, far past the 1.5 s grace
    proc, url = serve(build_model("llama", tmp_path / "llama"), "--shutdown-timeout", "1.5", "--max-num-seqs", "1")
    streams, answers, started = [[] for _ in range(8)], [], threading.Semaphore(0)
    body = {"model": "llama", "prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True}

    def stream(lines: list):
        with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as r:
            started.release()
            lines.extend(line for line in r.iter_lines() if line)

    def ask():
        started.release()
        answers.append(httpx.post(f"{url}/v1/completions", json=body, timeout=60))

    try:
        threads = [threading.Thread(target=stream, args=(lines,)) for lines in streams] + [threading.Thread(target=ask)]
        for t in threads:
            t.start()
        for _ in threads:
            assert started.acquire(timeout=30)
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read()
    assert "Traceback" not in log and "CancelledError" not in log, log[-3000:]
    ended = 0
    for lines in streams:
        assert lines[-1] == "data: [DONE]", lines[-3:]
        last = json.loads(lines[-2][len("data: "):])
        if "error" in last:
            ended += 1
            assert last["status_code"] == 503 and last["error"]["message"] == "the server is shutting down"
        else:
            assert last["choices"][0]["finish_reason"] == "length"
    assert ended >= 4
    [answer] = answers
    assert answer.status_code in (200, 503)
    if answer.status_code == 503:
        assert answer.json()["error"]["message"] == "the server is shutting down"
