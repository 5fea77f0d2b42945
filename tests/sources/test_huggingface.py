"""The real huggingface_hub client against a loopback Hub (or 'mirror', through HF_ENDPOINT)."""
import hashlib
import json

import pytest

from corral.progress import DownloadProgress
from corral.registry.errors import CorruptFileError, GatedRepoError, HubUnreachableError, ModelNotFoundError
from corral.registry.sources import resolve_model
from corral.store import META_FILE, ModelStore
from tests.sources.helpers import BIN_ONLY, GATED, TINY, TOKEN, same_files

SERVING = ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
           "tokenizer_config.json"]


def test_pull_through_the_mirror_fetches_only_what_serving_needs(hf_hub, tiny_dir):
    path = resolve_model(f"hf:{TINY}")
    assert sorted(p.name for p in path.iterdir() if p.name != META_FILE) == SERVING
    assert same_files(path, tiny_dir, SERVING)
    assert hf_hub.gets("model.safetensors") == [] and len(hf_hub.gets("/cdn/")) == 1  # LFS came by the CDN
    assert not hf_hub.gets("README.md") and not hf_hub.gets("pytorch_model.bin")


def test_metadata_records_source_commit_and_hashes(hf_hub, repos):
    path = resolve_model(f"hf:{TINY}")
    meta = json.loads((path / META_FILE).read_text())
    assert meta["source"] == "hf" and meta["repo"] == TINY and meta["complete"]
    assert meta["commit"] == repos[TINY].commit and meta["endpoint"] == hf_hub.url
    assert meta["files"]["model.safetensors"]["sha256"] == hashlib.sha256(
        repos[TINY].files["model.safetensors"]).hexdigest()


def test_a_stored_model_is_served_without_asking_the_hub(hf_hub):
    first = resolve_model(f"hf:{TINY}")
    before = len(hf_hub.requests)
    assert resolve_model(f"hf:{TINY}") == first
    assert len(hf_hub.requests) == before


def test_bin_weights_only_when_there_are_no_safetensors(hf_hub):
    path = resolve_model(f"hf:{BIN_ONLY}")
    assert (path / "pytorch_model.bin").is_file() and not (path / "model.safetensors").exists()


def test_a_pinned_commit_is_a_revision(hf_hub, repos):
    commit = repos[TINY].commit
    path = resolve_model(f"hf:{TINY}@{commit}")
    assert path.name.endswith("@" + commit)
    assert all(f"/resolve/{commit}/" in r.path for r in hf_hub.gets("/resolve/"))


def test_progress_reaches_ready_with_every_byte_counted(hf_hub, repos):
    seen = []
    progress = DownloadProgress(callback=lambda p: seen.append(p.state))
    resolve_model(f"hf:{TINY}", progress=progress)
    total = sum(len(repos[TINY].files[n]) for n in SERVING)
    assert progress.state == "ready" and progress.fraction == 1.0
    assert progress.total_bytes == progress.done_bytes == total
    assert progress.files_done == progress.files_total == len(SERVING)
    assert "downloading" in seen and seen[-1] == "ready"


def test_an_interrupted_download_resumes_where_it_stopped(hf_hub, repos, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    monkeypatch.setenv("CORRAL_DOWNLOAD_WORKERS", "1")
    size = len(repos[TINY].files["model.safetensors"])

    def interrupt(progress):  # Ctrl-C once half of the weights are in
        if progress.done_bytes > size // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        resolve_model(f"hf:{TINY}", progress=interrupt)
    path = resolve_model(f"hf:{TINY}")
    ranges = [r.headers.get("Range") for r in hf_hub.gets("/cdn/")]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")
    assert int(ranges[1][len("bytes="):].rstrip("-")) >= 64 * 1024
    assert (path / "model.safetensors").read_bytes() == repos[TINY].files["model.safetensors"]


def test_a_dropped_connection_is_resumed_in_place(hf_hub, repos, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    hf_hub.cut["model.safetensors"] = 100_000
    path = resolve_model(f"hf:{TINY}")
    assert [r.headers.get("Range") for r in hf_hub.gets("/cdn/")] == [None, f"bytes={64 * 1024}-"]
    assert (path / "model.safetensors").read_bytes() == repos[TINY].files["model.safetensors"]


def test_a_corrupt_download_is_caught_and_fetched_again(hf_hub, repos):
    hf_hub.corrupt["model.safetensors"] = 1
    hf_hub.corrupt["config.json"] = 1  # not LFS: checked against its git blob id
    path = resolve_model(f"hf:{TINY}")
    assert len(hf_hub.gets("/cdn/")) == 2 and len(hf_hub.gets("/config.json")) == 2
    for name in ("model.safetensors", "config.json"):
        assert (path / name).read_bytes() == repos[TINY].files[name]


def test_a_file_that_stays_corrupt_is_never_served(hf_hub):
    hf_hub.corrupt["model.safetensors"] = 99
    with pytest.raises(CorruptFileError, match="model.safetensors.*failed verification"):
        resolve_model(f"hf:{TINY}")
    hf_hub.corrupt.clear()
    path = resolve_model(f"hf:{TINY}")  # the next attempt completes it
    assert json.loads((path / META_FILE).read_text())["complete"]


def test_a_file_corrupted_on_disk_is_fetched_again(hf_hub, repos):
    path = resolve_model(f"hf:{TINY}")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))
    cdn_before = len(hf_hub.gets("/cdn/"))
    assert resolve_model(f"hf:{TINY}") == path
    assert weights.read_bytes() == repos[TINY].files["model.safetensors"]
    assert len(hf_hub.gets("/cdn/")) == cdn_before + 1 and len(hf_hub.gets("/config.json")) == 1


def test_a_missing_repository_names_the_source(hf_hub):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("hf:corral-test/no-such-model")
    assert "corral-test/no-such-model" in str(e.value) and hf_hub.url in str(e.value)
    assert "Hugging Face" in str(e.value) and "\n" not in str(e.value)


def test_a_missing_revision_says_so(hf_hub):
    with pytest.raises(ModelNotFoundError, match="revision 'v9'"):
        resolve_model(f"hf:{TINY}@v9")


def test_a_gated_repository_says_how_to_pass_a_token(hf_hub):
    with pytest.raises(GatedRepoError) as e:
        resolve_model(f"hf:{GATED}")
    assert "HF_TOKEN" in str(e.value) and GATED in str(e.value) and "\n" not in str(e.value)


def test_a_gated_repository_opens_with_a_granted_token(hf_hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    path = resolve_model(f"hf:{GATED}")
    assert (path / "model.safetensors").is_file()
    resolves = [r for r in hf_hub.requests if "/resolve/" in r.path]
    assert all(r.headers.get("Authorization") == f"Bearer {TOKEN}" for r in resolves)
    assert all("Authorization" not in r.headers for r in hf_hub.gets("/cdn/"))  # no token to the CDN


def test_an_unreachable_hub_names_the_endpoint_and_the_ways_out(hf_down):
    with pytest.raises(HubUnreachableError) as e:
        resolve_model(f"hf:{TINY}")
    message = str(e.value)
    assert hf_down in message and "--source modelscope" in message and "HF_ENDPOINT" in message
    assert e.value.endpoint == hf_down and "\n" not in message


def test_a_first_attempt_that_fetched_nothing_leaves_no_partial_entry(hf_hub):
    """The gated repository lists its files but refuses them; `corral list --all` shows nothing."""
    with pytest.raises(GatedRepoError):
        resolve_model(f"hf:{GATED}")
    assert ModelStore().models(include_partial=True) == []
