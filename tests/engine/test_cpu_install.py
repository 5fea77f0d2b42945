"""A CPU install has no triton (it comes with the `gpu` extra): the engine, the server and the CLI load and an engine
runs on the CPU without importing it."""
import subprocess
import sys
from pathlib import Path

NO_TRITON = """
import sys
sys.modules["triton"] = None  # an import of triton now fails, as where it is not installed
from corral import LLM, SamplingParams
import corral.cli, corral.server.api, corral.engine.profiling
out = LLM(sys.argv[1], device="cpu", max_model_len=64).generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True))
print(len(out[0].outputs[0].token_ids))
"""


def test_the_engine_and_server_load_and_an_engine_runs_without_triton(tiny_model_dirs):
    result = subprocess.run([sys.executable, "-c", NO_TRITON, str(tiny_model_dirs["qwen3"])],
                            cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-1] == "3"
