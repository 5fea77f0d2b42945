"""POST /v1/embeddings through the official openai SDK (and Ollama's /api/embed through the ollama
client) on a server of an embedding model beside a chat model: vectors equal to transformers' pooled,
normalised hidden states, float and base64, dimensions, token-id input, and the 400s of bad input."""
import base64
import functools

import httpx
import numpy as np
import openai
import pytest
import torch

from tests.server.helpers import API_KEY, ServerThread, error_of
from tests.tiny_models import build_embedding_model, build_model

TEXTS = ["Hello world! How are you today?",
         "The capital of France is Paris. The capital of China is Beijing. " * 3,  # chunked: past 32 tokens
         "def main():\n    return 42"]
MAX_MODEL_LEN = 128


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedding-server")
    return {"embed": build_embedding_model(root / "qwen3-embedding"), "llama": build_model("llama", root / "llama")}


@pytest.fixture(scope="module")
def server(model_dirs):
    from corral.server.config import build_config
    config_file = model_dirs["embed"].parent / "serve.toml"
    config_file.write_text(f"""
[models.embed]
model = "{model_dirs['embed']}"
max_num_batched_tokens = 32

[models.chat]
model = "{model_dirs['llama']}"

[models.llama-embed]
model = "{model_dirs['llama']}"
task = "embed"
pooling = "mean"
""")
    config = build_config(file=config_file, server={"api_key": API_KEY},
                          model_defaults={"max_model_len": MAX_MODEL_LEN, "device": "cpu", "dtype": "float32",
                                          "kv_cache_memory_bytes": "8MiB"})
    running = ServerThread(config).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as c:
        yield c


@functools.cache
def reference_model(model_dir):
    from transformers import AutoModel
    return AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()


def expected(model_dir, token_ids: list[int], pooling: str = "last") -> np.ndarray:
    """transformers' last hidden state, pooled, normalised."""
    with torch.no_grad():
        hidden = reference_model(model_dir)(torch.tensor([token_ids])).last_hidden_state[0]
    vector = hidden[-1] if pooling == "last" else hidden.mean(0)
    return torch.nn.functional.normalize(vector, dim=-1).numpy()


def token_ids(server, model: str, text: str) -> list[int]:
    return server.client(model).tokenizer.encode(text)


def test_float_embeddings_equal_transformers(client, server, model_dirs):
    response = client.embeddings.create(model="embed", input=TEXTS, encoding_format="float")
    assert response.object == "list" and response.model == "embed"
    assert [d.index for d in response.data] == [0, 1, 2] and all(d.object == "embedding" for d in response.data)
    ids = [token_ids(server, "embed", t) for t in TEXTS]
    assert max(map(len, ids)) > 32
    for d, prompt in zip(response.data, ids):
        np.testing.assert_allclose(d.embedding, expected(model_dirs["embed"], prompt), atol=1e-4)
    assert response.usage.prompt_tokens == response.usage.total_tokens == sum(map(len, ids))


def test_base64_embeddings_are_the_float_ones(client):
    floats = client.embeddings.create(model="embed", input=TEXTS[0], encoding_format="float").data[0].embedding
    encoded = client.embeddings.create(model="embed", input=TEXTS[0], encoding_format="base64").data[0].embedding
    assert np.array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"),
                          np.asarray(floats, dtype=np.float32))
    decoded = client.embeddings.create(model="embed", input=TEXTS[0]).data[0].embedding  # the SDK's default: base64
    assert np.array_equal(np.asarray(decoded, dtype=np.float32), np.asarray(floats, dtype=np.float32))


def test_dimensions_keep_the_first_values_normalised_again(client):
    full = np.asarray(client.embeddings.create(model="embed", input=TEXTS[0]).data[0].embedding)
    short = client.embeddings.create(model="embed", input=TEXTS[0], dimensions=16).data[0].embedding
    assert len(short) == 16
    np.testing.assert_allclose(short, full[:16] / np.linalg.norm(full[:16]), atol=1e-5)


def test_token_id_inputs_embed_as_their_text(client, server):
    ids = [token_ids(server, "embed", t) for t in TEXTS[:2]]
    by_text = client.embeddings.create(model="embed", input=TEXTS[:2], encoding_format="float").data
    by_ids = client.embeddings.create(model="embed", input=ids, encoding_format="float").data
    one = client.embeddings.create(model="embed", input=ids[0], encoding_format="float").data
    for a, b in zip(by_text, by_ids):
        np.testing.assert_allclose(a.embedding, b.embedding, atol=1e-6)
    np.testing.assert_allclose(one[0].embedding, by_text[0].embedding, atol=1e-6)


def test_a_chat_model_served_for_embeddings_pools_as_configured(client, server, model_dirs):
    response = client.embeddings.create(model="llama-embed", input=TEXTS, encoding_format="float", user="someone")
    for d, text in zip(response.data, TEXTS):
        np.testing.assert_allclose(d.embedding, expected(model_dirs["llama"], token_ids(server, "chat", text), "mean"),
                                   atol=1e-4)


def test_ollama_embed_gives_the_same_vectors(server, client):
    import ollama
    ollama_client = ollama.Client(host=server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    response = ollama_client.embed(model="embed", input=TEXTS[:2])
    openai_vectors = client.embeddings.create(model="embed", input=TEXTS[:2], encoding_format="float").data
    assert response.model == "embed" and response.prompt_eval_count == sum(
        len(token_ids(server, "embed", t)) for t in TEXTS[:2])
    for got, want in zip(response.embeddings, openai_vectors):
        np.testing.assert_allclose(got, want.embedding, atol=1e-6)
    long = ollama_client.embed(model="embed", input="word " * 400)  # truncated to the context by default
    assert len(long.embeddings[0]) == 64 and long.prompt_eval_count == MAX_MODEL_LEN
    with pytest.raises(ollama.ResponseError, match="maximum context length"):
        ollama_client.embed(model="embed", input="word " * 400, truncate=False)
    with pytest.raises(ollama.ResponseError, match='model "chat" does not support embeddings'):
        ollama_client.embed(model="chat", input="Hello")


def test_embeddings_from_a_generation_model_are_refused_naming_it(http):
    error = error_of(http.post("/v1/embeddings", json={"model": "chat", "input": "Hello"}), 400)
    assert "model chat is served for text generation" in error["message"] and error["param"] == "model"


def test_text_from_an_embedding_model_is_refused_naming_it(client, http):
    with pytest.raises(openai.BadRequestError, match="model embed is served for embeddings"):
        client.chat.completions.create(model="embed", messages=[{"role": "user", "content": "Hi"}], max_tokens=2)
    error = error_of(http.post("/v1/completions", json={"model": "embed", "prompt": "Hi", "stream": True}), 400)
    assert "served for embeddings" in error["message"]


def test_an_input_past_the_context_is_refused_naming_the_limit(client):
    with pytest.raises(openai.BadRequestError, match=f"maximum context length is {MAX_MODEL_LEN} tokens") as e:
        client.embeddings.create(model="embed", input=[[5] * 10, [5] * (MAX_MODEL_LEN + 1)])
    assert e.value.body["param"] == "input" and e.value.body["code"] == "context_length_exceeded"
    assert len(client.embeddings.create(model="embed", input=[[5] * MAX_MODEL_LEN]).data[0].embedding) == 64


@pytest.mark.parametrize("body, param, words", [
    ({"model": "embed", "input": "Hi", "dimensions": 65}, "dimensions", "dimensions must be in [1, 64]"),
    ({"model": "llama-embed", "input": "Hi", "dimensions": 16}, "dimensions", "does not support Matryoshka"),
    ({"model": "embed", "input": "Hi", "dimensions": 0}, "dimensions", "greater than or equal to 1"),
    ({"model": "embed", "input": []}, "input", "must not be empty"),
    ({"model": "embed", "input": ""}, "input", "empty"),
    ({"model": "embed", "input": [[1, 2], [99999]]}, "input", "token ids must be in [0, 512)"),
    ({"model": "embed", "input": "Hi", "encoding_format": "int8"}, "encoding_format", "'float' or 'base64'"),
    ({"model": "embed"}, "input", "Field required"),
])
def test_bad_input_gets_a_400_naming_the_parameter(http, body, param, words):
    error = error_of(http.post("/v1/embeddings", json=body), 400)
    assert error["param"] == param and words in error["message"], error


def test_an_unknown_model_gets_a_404(http):
    error = error_of(http.post("/v1/embeddings", json={"model": "nope", "input": "Hi"}), 404)
    assert "embed" in error["message"]
