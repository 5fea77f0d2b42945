"""One --max-model-len serves every model: a model built for fewer positions is served at its own
length (a longer context would index past its rotary tables and kill its engine); the offline
engine refuses such a length outright."""
import openai
import pytest

from corral import LLM
from corral.config import ConfigError
from tests.server.helpers import ServerThread

POSITIONS = 1024  # the tiny models' max_position_embeddings


def test_a_max_model_len_past_the_models_positions_is_served_at_the_models_length(model_dirs):
    from corral.server.config import build_config
    config = build_config([str(model_dirs["tiny-qwen3"])], served_names=["tiny"],
                          model_defaults={"max_model_len": 4 * POSITIONS, "device": "cpu",
                                          "kv_cache_memory_bytes": 16 << 20})
    server = ServerThread(config).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
        assert client.models.retrieve("tiny").max_model_len == POSITIONS
        with pytest.raises(openai.BadRequestError, match=f"maximum context length is {POSITIONS} tokens"):
            client.completions.create(model="tiny", prompt=[5] * 1500, max_tokens=2)
        r = client.completions.create(model="tiny", prompt=[5] * (POSITIONS - 8), max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
        assert client.models.retrieve("tiny").state == "ready"
    finally:
        server.stop()


def test_the_offline_engine_refuses_a_max_model_len_past_the_models_positions(model_dirs):
    with pytest.raises(ConfigError, match=f"max_model_len 4096 is past the {POSITIONS} positions"):
        LLM(str(model_dirs["tiny-qwen3"]), max_model_len=4096)
