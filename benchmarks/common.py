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


def model_dir(name: str, dtype: str = "bfloat16", tokenizer: str | None = None) -> str:
    """A directory holding config.json, which the engine runs with load_format='dummy', and the
    tokenizer files of the folder `tokenizer` if given (a grammar needs a real tokenizer)."""
    import shutil
    path = Path(tempfile.gettempdir()) / "corral-bench" / name
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(dict(CONFIGS[name], torch_dtype=dtype)))
    for f in Path(tokenizer).glob("tokenizer*") if tokenizer else ():
        shutil.copy(f, path / f.name)
    return str(path)


def emit(record: dict):
    print(json.dumps(record), flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(Path(out) / "results.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def triton_variants() -> dict[str, int]:
    """{kernel: compiled variants so far} for corral's Triton kernels and xgrammar's bitmask kernel: a count
    that grows during a timed run means the warm-up missed a specialization and the run paid for its compile."""
    import importlib
    import pkgutil

    import corral.kernels
    from triton.runtime.jit import KernelInterface  # a JITFunction, or under TRITON_INTERPRET its stand-in
    modules = {info.name: f"corral.kernels.{info.name}" for info in pkgutil.iter_modules(corral.kernels.__path__)}
    modules["xgrammar"] = "xgrammar.kernels.apply_token_bitmask_inplace_triton"
    counts = {}
    for short, module_name in modules.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # xgrammar without triton
            continue
        for name, fn in vars(module).items():
            if isinstance(fn, KernelInterface) and getattr(fn, "fn", None) and fn.fn.__module__ == module.__name__:
                caches = getattr(fn, "device_caches", {})  # the interpreter compiles nothing
                counts[f"{short}.{name}"] = sum(len(cache[0]) for cache in caches.values())
    return counts


def new_variants(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in after.items() if n > before.get(name, 0)}
