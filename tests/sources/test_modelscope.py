"""The real modelscope client against a loopback ModelScope, and `auto` falling back to it."""
import json
import sys

import pytest

from corral.progress import DownloadProgress
from corral.registry.errors import HubUnreachableError, ModelNotFoundError, SourceUnavailableError
from corral.registry.sources import resolve_model
from corral.store import META_FILE
from tests.sources.helpers import TINY, same_files

SERVING = ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
           "tokenizer_config.json"]


def test_pull_from_modelscope_fetches_only_what_serving_needs(ms_hub, tiny_dir):
    path = resolve_model(f"ms:{TINY}")
    assert sorted(p.name for p in path.iterdir() if p.name != META_FILE) == SERVING
    assert same_files(path, tiny_dir, SERVING)
    assert not ms_hub.gets("README.md") and not ms_hub.gets("pytorch_model.bin")
    meta = json.loads((path / META_FILE).read_text())
    assert meta["source"] == "ms" and meta["endpoint"] == ms_hub.url and meta["complete"]


def test_auto_falls_back_to_modelscope_when_the_hf_endpoint_is_down(hf_down, ms_hub, tiny_manifest, tiny_dir):
    progress = DownloadProgress()
    path = resolve_model(tiny_manifest, progress=progress)
    assert progress.source.startswith("ModelScope") and progress.state == "ready"
    assert path.parent.name == "ms" and same_files(path, tiny_dir, SERVING)
    assert json.loads((path / META_FILE).read_text())["manifest"] == tiny_manifest


def test_auto_prefers_the_hf_hub_when_it_answers(hf_hub, ms_hub, tiny_manifest):
    path = resolve_model(tiny_manifest)
    assert path.parent.name == "hf" and not ms_hub.gets()


def test_source_option_and_corral_source_pick_the_hub(hf_hub, ms_hub, tiny_manifest, monkeypatch):
    assert resolve_model(tiny_manifest, source="modelscope").parent.name == "ms"
    monkeypatch.setenv("CORRAL_SOURCE", "hf")
    assert resolve_model(tiny_manifest).parent.name == "hf"


def test_a_bare_hub_id_goes_to_the_chosen_hub(hf_down, ms_hub):
    assert resolve_model(TINY).parent.name == "ms"


def test_a_stored_copy_from_either_hub_serves_auto_offline(hf_hub, ms_hub, tiny_manifest, monkeypatch):
    path = resolve_model(tiny_manifest, source="modelscope")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", "http://127.0.0.1:9")
    assert resolve_model(tiny_manifest) == path


def test_an_interrupted_download_resumes_where_it_stopped(ms_hub, repos, monkeypatch):
    import modelscope_hub._download as msdl
    monkeypatch.setattr(msdl, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setenv("CORRAL_DOWNLOAD_WORKERS", "1")
    size = len(repos[TINY].files["model.safetensors"])

    def interrupt(progress):
        if progress.done_bytes > size // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resolve_model(f"ms:{TINY}", progress=interrupt)
    path = resolve_model(f"ms:{TINY}")
    ranges = [r.headers.get("Range") for r in ms_hub.gets("model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")
    assert (path / "model.safetensors").read_bytes() == repos[TINY].files["model.safetensors"]


def test_a_corrupt_download_is_caught_and_fetched_again(ms_hub, repos):
    ms_hub.corrupt["model.safetensors"] = 1
    path = resolve_model(f"ms:{TINY}")
    assert len(ms_hub.gets("model.safetensors")) == 2
    assert (path / "model.safetensors").read_bytes() == repos[TINY].files["model.safetensors"]


def test_a_missing_repository_names_the_source(ms_hub):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("ms:corral-test/no-such-model")
    assert "corral-test/no-such-model" in str(e.value) and "ModelScope" in str(e.value)
    assert ms_hub.url in str(e.value) and "\n" not in str(e.value)


def test_both_hubs_down_names_both_endpoints(hf_down, tiny_manifest, monkeypatch):
    from tests.sources.hub_server import closed_port_url
    ms_url = closed_port_url()
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", ms_url)
    with pytest.raises(HubUnreachableError) as e:
        resolve_model(tiny_manifest)
    assert hf_down in str(e.value) and ms_url in str(e.value) and "\n" not in str(e.value)


def test_without_the_modelscope_library_the_error_says_what_to_install(ms_hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "modelscope_hub", None)
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(SourceUnavailableError, match=r"pip install 'modelscope>=1.40'"):
        resolve_model(f"ms:{TINY}")


def test_a_dropped_connection_is_resumed_in_place(ms_hub, repos):
    ms_hub.cut["model.safetensors"] = 100_000
    path = resolve_model(f"ms:{TINY}")
    ranges = [r.headers.get("Range") for r in ms_hub.gets("FilePath=model.safetensors")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")
    assert int(ranges[1][len("bytes="):].rstrip("-")) > 0
    assert (path / "model.safetensors").read_bytes() == repos[TINY].files["model.safetensors"]
