"""The store's bookkeeping and the choice of files, without any hub."""
import os

from corral.download import RemoteFile, select_files
from corral.store import ModelStore, StoredModel


def names(files):
    return [f.path for f in select_files([RemoteFile(n, 1) for n in files])]


def test_serving_files_are_config_tokenizer_template_and_safetensors():
    repo = ["README.md", ".gitattributes", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "chat_template.jinja", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
            "consolidated.safetensors", "original/consolidated.00.pth", "onnx/model.onnx", "qwen.tiktoken",
            "merges.txt", "vocab.json", "tokenizer.model"]
    assert names(repo) == sorted(["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                  "chat_template.jinja", "model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors", "model.safetensors.index.json",
                                  "qwen.tiktoken", "merges.txt", "vocab.json", "tokenizer.model"])


def test_bin_weights_are_taken_only_without_safetensors():
    repo = ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
            "pytorch_model.bin.index.json", "training_args.bin"]
    assert names(repo) == ["config.json", "pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin",
                           "pytorch_model.bin.index.json"]


def make_model(store: ModelStore, complete=True) -> StoredModel:
    path = store.dir_for("hf", "Org/Name", "v1")
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(b"\0" * 1000)
    model = StoredModel(path=path, source="hf", repo="Org/Name", revision="v1", complete=complete,
                        files={n: store.record(path / n) for n in ("config.json", "model.safetensors")})
    store.write(model)
    return model


def test_layout_metadata_and_listing(tmp_path):
    store = ModelStore(tmp_path)
    model = make_model(store)
    assert model.path == tmp_path / "hf" / "Org--Name@v1"
    (listed,) = store.models()
    assert listed.ref == "hf:Org/Name@v1" and listed.size == 1002 and listed.pulled_at
    assert store.get("hf", "Org/Name", "v1").files == model.files and store.get("hf", "Org/Name") is None


def test_partial_models_are_listed_only_on_request(tmp_path):
    store = ModelStore(tmp_path)
    make_model(store, complete=False)
    assert store.models() == [] and len(store.models(include_partial=True)) == 1
    assert store.get("hf", "Org/Name", "v1") is None


def test_verify_checks_sizes_always_and_hashes_when_a_file_was_touched(tmp_path):
    store = ModelStore(tmp_path)
    model = make_model(store)
    weights = model.path / "model.safetensors"
    assert store.verify(model) == []
    stat = weights.stat()
    weights.write_bytes(b"\1" * 1000)  # same size, other bytes
    assert store.verify(model) == ["model.safetensors"]
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # bit rot that keeps the mtime
    assert store.verify(model) == [] and store.verify(model, full=True) == ["model.safetensors"]
    weights.write_bytes(b"\0" * 10)
    assert store.verify(model) == ["model.safetensors"]
    (model.path / "config.json").unlink()
    assert sorted(store.verify(model)) == ["config.json", "model.safetensors"]


def test_remove_deletes_the_directory(tmp_path):
    store = ModelStore(tmp_path)
    model = make_model(store)
    store.remove(model)
    assert not model.path.exists() and store.models(include_partial=True) == []


def test_a_read_only_store_serves_its_complete_copies_and_names_itself_for_the_rest(hf_hub, monkeypatch):
    """A /models mounted read-only (or pre-pulled by an admin): no lock is needed to serve a complete
    copy; what must be written fails with one line naming the store."""
    import pytest

    import corral.store
    from corral.registry.errors import StoreNotWritableError
    from corral.registry.sources import resolve_model
    from tests.sources.helpers import BIN_ONLY, TINY

    path = resolve_model(f"hf:{TINY}")

    class ReadOnlyLock:
        def __init__(self, lock_file):
            self.lock_file = lock_file

        def acquire(self):
            raise PermissionError(13, "Permission denied", self.lock_file)

    monkeypatch.setattr(corral.store, "FileLock", ReadOnlyLock)
    requests = len(hf_hub.requests)
    assert resolve_model(f"hf:{TINY}") == path
    assert len(hf_hub.requests) == requests  # from the store, without asking the hub
    with pytest.raises(StoreNotWritableError, match=r"model store .* is not writable \(Permission denied\); set CORRAL_HOME"):
        resolve_model(f"hf:{BIN_ONLY}")


def test_a_download_that_the_disk_cannot_take_fails_before_it_starts(hf_hub):
    from collections import namedtuple

    import pytest

    import corral.download
    from corral.registry.errors import SourceError
    from corral.registry.sources import resolve_model
    from tests.sources.helpers import TINY

    usage = namedtuple("usage", "total used free")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(corral.download.shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 1000, 1000))
        with pytest.raises(SourceError, match=r"needs [\d.]+ KB more in .*, which has 1000.0 B free; free some space"):
            resolve_model(f"hf:{TINY}")
    assert hf_hub.gets() == []  # nothing fetched
    assert resolve_model(f"hf:{TINY}").is_dir()


def test_an_embedding_model_brings_its_sentence_transformers_pooling_files():
    repo = ["config.json", "model.safetensors", "tokenizer.json", "modules.json", "config_sentence_transformers.json",
            "1_Pooling/config.json", "2_Normalize/.gitkeep", "README.md"]
    assert names(repo) == ["1_Pooling/config.json", "config.json", "config_sentence_transformers.json",
                           "model.safetensors", "modules.json", "tokenizer.json"]
