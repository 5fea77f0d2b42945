from pathlib import Path

import pytest

from tests.sources.helpers import BIN_ONLY, GATED, TINY, TOKEN
from tests.sources.hub_server import FakeHFHub, FakeModelScope, Repo, closed_port_url
from tests.tiny_models import build_model

TINY_MANIFEST = f"""
["tiny-llama"]
hf = "{TINY}"
modelscope = "{TINY}"
architecture = "LlamaForCausalLM"
license = "MIT"
max_model_len = 256
"""


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """The model the fake hubs serve, as an ordinary local directory (the reference)."""
    return build_model("llama", tmp_path_factory.mktemp("sources") / "tiny-llama")


@pytest.fixture
def repos(tiny_dir) -> dict[str, Repo]:
    # what real repositories also hold and serving does not need
    extra = {"README.md": b"# tiny llama\n", "pytorch_model.bin": b"\0" * 4096, "original/consolidated.pth": b"x" * 64}
    bin_only = Repo.from_dir(tiny_dir, skip=("model.safetensors",))
    bin_only.files["pytorch_model.bin"] = b"\1" * 2048
    gated = Repo.from_dir(tiny_dir)
    gated.gated = True
    return {TINY: Repo.from_dir(tiny_dir, extra=extra), GATED: gated, BIN_ONLY: bin_only}


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    """A fresh store, no tokens, no offline switches, quick probes."""
    monkeypatch.setenv("CORRAL_HOME", str(tmp_path / "home"))
    for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "CORRAL_SOURCE", "MODELSCOPE_API_TOKEN", "MODELSCOPE_DOMAIN",
                "HF_ENDPOINT", "MODELSCOPE_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CORRAL_PROBE_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return tmp_path / "home"


@pytest.fixture
def hf_hub(repos, monkeypatch):
    with FakeHFHub(repos, tokens=(TOKEN,)) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def ms_hub(repos, monkeypatch):
    pytest.importorskip("modelscope_hub", reason="the ModelScope source needs modelscope >= 1.40")
    with FakeModelScope(repos) as hub:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
        yield hub


@pytest.fixture
def hf_down(monkeypatch) -> str:
    url = closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", url)
    return url


@pytest.fixture
def tiny_manifest(isolated_env) -> str:
    """A user manifest naming the tiny model on both hubs."""
    isolated_env.mkdir(parents=True, exist_ok=True)
    (isolated_env / "models").mkdir(exist_ok=True)
    (isolated_env / "models" / "tiny.toml").write_text(TINY_MANIFEST)
    return "tiny-llama"

