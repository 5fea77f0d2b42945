"""benchmarks.serving --emulated-engine: a real `corral serve` whose engine processes sleep each step for an
H100's time instead of computing, so that the API process and the client are measured on a CPU; every request
gets its tokens, and --gc-pauses records the server's full garbage collections."""
import json
import shutil
import subprocess
import sys
from pathlib import Path


def test_a_server_with_emulated_engines_streams_every_requested_token(tiny_model_dirs, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(Path(tiny_model_dirs["qwen3"]) / "config.json", model)  # the benchmark writes its own tokenizer
    pauses = tmp_path / "gc.txt"
    run = subprocess.run([sys.executable, "-m", "benchmarks.serving", "--model", str(model), "--emulated-engine",
                          "--rates", "inf", "--num-requests", "12", "--input-len", "16", "--output-len", "5",
                          "--startup-timeout", "120", "--gc-pauses", str(pauses)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    (record,) = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert record["completed"] == 12 and record["failed"] == 0 and record["tokens_per_chunk"] >= 1
    assert record["output_tok_s"] > 0
    # the server froze its heap at start: that collection, at least, is on record
    lines = [line.split() for line in pauses.read_text().splitlines()]
    assert lines and all(len(line) == 3 and float(line[2]) >= 0 for line in lines)
