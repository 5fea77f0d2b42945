"""Pulling again a model the store holds while the hub offers newer files (`corral pull NAME`), and
ModelScope's copies pinned to one commit, through the real clients against the loopback hubs."""
import json
import logging

import pytest

from corral.cli import main
from corral.progress import DownloadProgress
from corral.registry.sources import resolve_model
from corral.store import META_FILE, ModelStore
from tests.sources.helpers import TINY
from tests.sources.hub_server import FakeModelScope, closed_port_url

HUBS = [("hf", "hf_hub", "HF_ENDPOINT"), ("ms", "ms_hub", "MODELSCOPE_ENDPOINT")]


def newer_weights(hub) -> bytes:
    """Commit new weights (same size, other bytes) on top of the hub's tiny model; returns them."""
    weights = hub.repos[TINY].files["model.safetensors"][::-1]
    hub.repos[TINY] = hub.repos[TINY].updated({"model.safetensors": weights})
    return weights


def small_chunks(scheme, monkeypatch):
    monkeypatch.setenv("CORRAL_DOWNLOAD_WORKERS", "1")
    if scheme == "hf":
        from huggingface_hub import constants
        monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)


@pytest.mark.parametrize("scheme, hub_fixture, variable", HUBS)
def test_an_interrupted_update_leaves_the_stored_copy_servable_offline(request, monkeypatch, scheme, hub_fixture,
                                                                       variable):
    hub = request.getfixturevalue(hub_fixture)
    path = resolve_model(f"{scheme}:{TINY}")
    old = (path / "model.safetensors").read_bytes()
    new = newer_weights(hub)
    small_chunks(scheme, monkeypatch)

    def interrupt(progress):  # Ctrl-C half-way through the new weights
        if progress.state == "downloading" and progress.done_bytes > progress.total_bytes // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resolve_model(f"{scheme}:{TINY}", progress=interrupt, update=True)
    assert ModelStore().complete_copy(path) is not None
    assert (path / "model.safetensors").read_bytes() == old
    monkeypatch.setenv(variable, closed_port_url())  # offline: served from the store, no download tried
    assert resolve_model(f"{scheme}:{TINY}") == path

    monkeypatch.setenv(variable, hub.url)
    assert resolve_model(f"{scheme}:{TINY}", update=True) == path  # the update resumes and is swapped in
    assert (path / "model.safetensors").read_bytes() == new
    assert json.loads((path / META_FILE).read_text())["commit"] == hub.repos[TINY].commit
    store = ModelStore()
    assert store.complete_copy(path) is not None
    assert not (store.updates().root / path.relative_to(store.root)).exists()  # the staged update moved in
    assert [p.name for p in store.updates().root.iterdir()] == [".locks"]  # no empty folders left behind


@pytest.mark.parametrize("scheme, hub_fixture, variable", HUBS)
def test_a_failed_update_keeps_the_copy_as_it_was_with_one_warning(request, caplog, scheme, hub_fixture, variable):
    hub = request.getfixturevalue(hub_fixture)
    path = resolve_model(f"{scheme}:{TINY}")
    before = (path / META_FILE).read_text(), (path / "model.safetensors").read_bytes()
    newer_weights(hub)
    hub.corrupt["model.safetensors"] = 99  # the new weights never pass verification
    with caplog.at_level(logging.WARNING, logger="corral.registry.sources"):
        assert resolve_model(f"{scheme}:{TINY}", update=True) == path
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "corral.registry.sources"]
    assert "update failed" in warning and "keeping the stored copy" in warning and "\n" not in warning
    assert ((path / META_FILE).read_text(), (path / "model.safetensors").read_bytes()) == before
    assert ModelStore().complete_copy(path) is not None


def fetches(hub, name: str) -> int:
    """GETs of one file's bytes (the HF Hub sends LFS files by its CDN)."""
    if name.endswith(".safetensors") and hub.gets("/cdn/"):
        return len(hub.gets("/cdn/"))
    return len([r for r in hub.gets() if r.path.endswith(("/" + name, "FilePath=" + name))])


@pytest.mark.parametrize("scheme, hub_fixture, variable", HUBS)
def test_an_update_fetches_only_the_changed_files(request, scheme, hub_fixture, variable):
    hub = request.getfixturevalue(hub_fixture)
    path = resolve_model(f"{scheme}:{TINY}")
    assert resolve_model(f"{scheme}:{TINY}", update=True) == path  # nothing new: nothing fetched
    assert fetches(hub, "config.json") == fetches(hub, "model.safetensors") == 1
    assert [p.name for p in ModelStore().updates().root.iterdir()] == [".locks"]
    newer_weights(hub)
    assert resolve_model(f"{scheme}:{TINY}", update=True) == path
    assert fetches(hub, "config.json") == 1 and fetches(hub, "model.safetensors") == 2


def test_no_progress_means_no_bars_from_the_modelscope_client(ms_hub, capfd):
    assert main(["--log-level", "WARNING", "pull", f"ms:{TINY}", "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert "model.safetensors" not in err and "it/s" not in err and "B/s" not in err


def test_corral_bars_still_show_modelscope_downloads(ms_hub, repos, capfd):
    progress = DownloadProgress(bars=True)
    resolve_model(f"ms:{TINY}", progress=progress)
    err = capfd.readouterr().err
    assert f"ms:{TINY} (6 files)" in err and "model.safetensors" in err
    assert progress.done_bytes == progress.total_bytes == sum(
        len(repos[TINY].files[n]) for n in ("chat_template.jinja", "config.json", "generation_config.json",
                                            "model.safetensors", "tokenizer.json", "tokenizer_config.json"))


class MovingModelScope(FakeModelScope):
    """ModelScope whose master moves to a new commit right after it listed the files."""

    def __init__(self, repos):
        super().__init__(repos)
        self.next = None

    def route(self, h, method, path, query):
        super().route(h, method, path, query)
        if path.endswith("/repo/files") and self.next is not None:
            self.repos[TINY], self.next = self.next, None


def test_a_modelscope_pull_is_pinned_to_the_commit_it_listed(repos, monkeypatch):
    pytest.importorskip("modelscope_hub")
    listed = repos[TINY]
    with MovingModelScope(repos) as hub:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", hub.url)
        hub.next = listed.updated({"model.safetensors": b"\0" * 1000, "config.json": b"{}"})
        path = resolve_model(f"ms:{TINY}")
        assert all(f"Revision={listed.commit}" in r.path for r in hub.gets())
    assert json.loads((path / META_FILE).read_text())["commit"] == listed.commit
    for name in ("model.safetensors", "config.json"):
        assert (path / name).read_bytes() == listed.files[name]


def test_list_shows_the_commit_of_a_modelscope_copy(ms_hub, repos, capsys):
    assert main(["--log-level", "WARNING", "pull", f"ms:{TINY}"]) == 0
    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["source"] == "ms" and row["revision"] == repos[TINY].commit
