"""Mirrors that misbehave the way real ones do: a front page that is slow or answers 5xx while the API
works, an HTML page instead of the API (captive portal, proxy login, wrong HF_ENDPOINT), and a
repository that is gated on the HF Hub but open on ModelScope (Llama 2)."""
import json
import time

import pytest

from corral.cli import main
from corral.registry.errors import GatedRepoError, HubUnreachableError
from corral.registry.sources import resolve_model
from corral.store import META_FILE
from tests.sources.helpers import GATED, TINY
from tests.sources.hub_server import FakeHFHub, FakeHub, closed_port_url

HTML = b"<!DOCTYPE html><html><body><h1>Welcome</h1><p>Please log in to continue.</p></body></html>"


class FrontPageHub(FakeHFHub):
    """A working Hub API whose front page (`/`) is slow, or answers 500."""

    def __init__(self, repos, delay: float = 0.0, status: int | None = None):
        super().__init__(repos)
        self.delay, self.status = delay, status

    def route(self, h, method, path, query):
        if path in ("/", ""):
            time.sleep(self.delay)
            if self.status:
                return h.reply(self.status, HTML, {"Content-Type": "text/html"}, method)
        return super().route(h, method, path, query)


class HTMLHub(FakeHub):
    """Answers every request with 200 and an HTML page."""

    def is_file_path(self, path: str) -> bool:
        return False

    def route(self, h, method, path, query):
        h.reply(200, HTML, {"Content-Type": "text/html"}, method)


@pytest.mark.parametrize("delay, status", [(1.5, None), (0.0, 500), (0.0, 503)])
def test_a_chosen_mirror_whose_front_page_is_slow_or_failing_still_serves_the_model(repos, monkeypatch, delay,
                                                                                   status):
    monkeypatch.setenv("CORRAL_PROBE_TIMEOUT", "0.5")
    with FrontPageHub(repos, delay=delay, status=status) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = resolve_model(f"hf:{TINY}")
        assert json.loads((path / META_FILE).read_text())["complete"]
        assert (path / "model.safetensors").read_bytes() == repos[TINY].files["model.safetensors"]
        path = resolve_model(f"hf:{TINY}", source="hf", update=True)  # `corral pull --source hf`
        assert path.parent.name == "hf"


def test_auto_still_falls_back_quickly_when_the_hf_front_page_is_slow(repos, ms_hub, tiny_manifest, monkeypatch):
    monkeypatch.setenv("CORRAL_PROBE_TIMEOUT", "0.5")
    with FrontPageHub(repos, delay=1.5) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert resolve_model(tiny_manifest).parent.name == "ms"


@pytest.mark.parametrize("scheme, env, variable", [("hf", "HF_ENDPOINT", "HF_ENDPOINT"),
                                                   ("ms", "MODELSCOPE_ENDPOINT", "MODELSCOPE_ENDPOINT")])
def test_an_html_page_instead_of_the_api_is_named_in_one_line(monkeypatch, capsys, scheme, env, variable):
    if scheme == "ms":
        pytest.importorskip("modelscope_hub")
    with HTMLHub() as hub:
        monkeypatch.setenv(env, hub.url)
        with pytest.raises(HubUnreachableError) as e:
            resolve_model(f"{scheme}:{TINY}")
        message = str(e.value)
        assert hub.url in message and "not the" in message and variable in message and "\n" not in message
        code = main(["--log-level", "WARNING", "pull", f"{scheme}:{TINY}"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("corral: error: cannot reach") and len(err.strip().splitlines()) == 1


def test_auto_falls_back_to_modelscope_when_the_mirror_answers_html(ms_hub, tiny_manifest, tiny_dir, monkeypatch):
    with HTMLHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = resolve_model(tiny_manifest)
    assert path.parent.name == "ms"
    assert (path / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


def _gated_on_hf_manifest(home, ms_id=TINY) -> str:
    (home / "models").mkdir(parents=True, exist_ok=True)
    (home / "models" / "llama.toml").write_text(f'["gated-llama"]\nhf = "{GATED}"\nmodelscope = "{ms_id}"\n')
    return "gated-llama"


def test_auto_takes_the_open_modelscope_copy_of_a_model_gated_on_the_hf_hub(hf_hub, ms_hub, isolated_env, capsys):
    name = _gated_on_hf_manifest(isolated_env)
    assert main(["--log-level", "WARNING", "pull", name]) == 0
    out = capsys.readouterr().out
    assert "/ms/" in out and "ready in" in out
    assert resolve_model(name).parent.name == "ms"


def test_a_model_that_no_hub_gives_names_every_reason(hf_hub, ms_hub, isolated_env, capsys):
    name = _gated_on_hf_manifest(isolated_env, ms_id="corral-test/no-such-model")
    with pytest.raises(Exception) as e:
        resolve_model(name)
    message = str(e.value)
    assert "HF_TOKEN" in message and "no-such-model" in message and "ModelScope" in message
    assert "\n" not in message
    assert main(["--log-level", "WARNING", "pull", name]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_an_explicit_hub_does_not_fall_back(hf_hub, ms_hub):
    with pytest.raises(GatedRepoError):
        resolve_model(f"hf:{GATED}")
    assert not ms_hub.gets()


def test_pulling_again_while_its_hub_is_down_keeps_the_copy_instead_of_fetching_another(
        hf_hub, ms_hub, tiny_manifest, monkeypatch):
    path = resolve_model(tiny_manifest)
    assert path.parent.name == "hf"
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    assert resolve_model(tiny_manifest, update=True) == path  # `corral pull` again, HF unreachable
    assert ms_hub.gets() == []  # no second copy from ModelScope
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    before = len(hf_hub.requests)
    assert resolve_model(tiny_manifest, update=True) == path  # HF back: updated in place
    assert len(hf_hub.requests) > before


class Plain404Hub(FakeHub):
    """A web server that is not the Hub: every path is a plain 404 page."""

    def is_file_path(self, path: str) -> bool:
        return False

    def route(self, h, method, path, query):
        h.reply(404, b"Not Found", {"Content-Type": "text/plain"}, method)


def test_auto_falls_back_to_modelscope_when_the_hf_endpoint_answers_a_plain_404(ms_hub, tiny_manifest, tiny_dir,
                                                                               monkeypatch):
    with Plain404Hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        path = resolve_model(tiny_manifest)
        with pytest.raises(HubUnreachableError, match="not an answer of the Hub API"):
            resolve_model(f"hf:{TINY}")
    assert path.parent.name == "ms"
    assert (path / "model.safetensors").read_bytes() == (tiny_dir / "model.safetensors").read_bytes()


@pytest.mark.parametrize("endpoint, suggested", [(None, "https://hf-mirror.com"),
                                                 ("https://hf-mirror.com", "unset HF_ENDPOINT")])
def test_the_unreachable_hint_never_suggests_the_endpoint_in_use(monkeypatch, endpoint, suggested):
    from corral.plugins.huggingface import HuggingFaceSource
    from corral.store import ModelStore
    if endpoint:
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
    else:
        monkeypatch.delenv("HF_ENDPOINT", raising=False)
    message = str(HuggingFaceSource(ModelStore()).unreachable("timed out"))
    hint = message.split(";", 1)[1]
    assert suggested in hint and (endpoint is None or endpoint not in hint)
