"""Every kernel launch the engine makes compiles for a Hopper GPU, checked without one: the
interpreter runs what the GPU compiler may reject (see gpu_compile.py)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import triton

REPO = Path(__file__).resolve().parents[2]


def _ptxas() -> bool:
    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    return bundled.exists() or bool(os.environ.get("TRITON_PTXAS_PATH"))


@pytest.mark.skipif(not _ptxas(), reason="this triton has no ptxas to compile for the GPU with")
def test_every_kernel_launch_compiles_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "tests.kernels.gpu_compile"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "kernel launches compile for sm_90" in result.stdout
