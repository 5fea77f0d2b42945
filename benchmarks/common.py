import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.configs import CONFIGS


def environment() -> dict:
    import transformers
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    commit = os.environ.get("CORRAL_COMMIT") or _git_commit()
    return {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch": torch.__version__, "triton": triton_version, "transformers": transformers.__version__,
        "python": platform.python_version(), "commit": commit, "command": " ".join(sys.argv),
    }


def _git_commit() -> str | None:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def model_dir(name: str, dtype: str = "bfloat16") -> str:
    """A directory holding only config.json: the engine runs it with load_format='dummy'."""
    path = Path(tempfile.gettempdir()) / "corral-bench" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(dict(CONFIGS[name], torch_dtype=dtype)))
    return str(path)


def emit(record: dict):
    print(json.dumps(record), flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(Path(out) / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
