"""cpu_monitor: each process of a serving run under its role, with its share of a core from /proc."""
import io
import json
import subprocess
import sys
import time

import pytest

from benchmarks.cpu_monitor import monitor, report, role

SPAWNED = ["/usr/bin/python3", "-c", "from multiprocessing.spawn import spawn_main; spawn_main(tracker_fd=5)",
           "--multiprocessing-fork"]


def test_servers_their_engines_and_clients_are_told_apart():
    corral = ["/venv/bin/python3", "/venv/bin/corral", "serve", "--config", "/tmp/c.toml"]
    vllm = ["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "/m", "--served-model-name", "qwen3-4b"]
    assert role(corral, [["bash", "x.sh"]]) == "corral-api"
    assert role(["python3", "-m", "corral.cli", "serve", "--config", "c"], []) == "corral-api"
    assert role(SPAWNED, [corral, ["bash"]]) == "corral-engine"
    assert role(corral, [corral]) == "corral-engine"  # a forked child keeps its server's command line
    assert role(vllm, [["bash"]]) == "vllm-api qwen3-4b"
    assert role(["VLLM::EngineCore"], [vllm]) == "vllm-engine qwen3-4b"
    assert role(["python3", "/peer/load_client.py", "--url", "u", "--model", "llama-2-7b"], []) == "client llama-2-7b"
    assert role(["python3", "-m", "benchmarks.peer_load_client", "/peer", "--model=qwen3-4b"], []) == \
        "client qwen3-4b"
    assert role(["python3", "other.py"], []) == "other"
    assert role(["sleep", "10"], [corral]) == "corral-engine"
    assert role(["sleep", "10"], []) is None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_busy_client_shows_at_most_a_core_and_an_idle_process_not_at_all():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 3\nwhile time.time() < end: pass",
                             "load_client", "--model", "m"])
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)", "load_client", "--model", "idle"])
    out = io.StringIO()
    try:
        time.sleep(0.5)  # both interpreters started: the idle one's start-up is not counted
        monitor(out, interval=0.5, duration=2.0)
    finally:
        busy.kill(), idle.kill()
    samples = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(samples) >= 3
    shares = [s["cpu"].get("client m", 0.0) for s in samples]
    assert max(shares) > 50 and all(share <= 110 for share in shares)
    assert not any("client idle" in s["cpu"] for s in samples)


def test_the_report_counts_only_the_samples_where_a_client_is_busy(tmp_path):
    path = tmp_path / "cpu.jsonl"
    samples = [{"corral-api": 90.0},  # before the run: left out
               {"client q": 100.0, "corral-api": 60.0, "corral-engine 7": 100.0},
               {"client q": 95.0, "corral-engine 7": 100.0},
               {"client q": 99.0, "corral-api": 80.0, "corral-engine 7": 98.0}]
    path.write_text("".join(json.dumps({"at": i, "cpu": s}) + "\n" for i, s in enumerate(samples)))
    summary = report(str(path))
    assert summary["corral-api"] == {"samples": 3, "mean": 46.7, "p50": 60.0, "p90": 80.0, "max": 80.0}
    assert summary["client q"]["mean"] == 98.0 and summary["corral-engine 7"]["max"] == 100.0
