"""POST /v1/embeddings (OpenAI's API), and `embed_prompts`, the one path every dialect's embeddings take
(Ollama's /api/embed too): admit, tokenize, check, pool in the engine."""
import asyncio
import base64

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from corral.engine.input_processor import PromptError
from corral.outputs import EmbeddingRequestOutput
from corral.pooling_params import PoolingParams, PoolingParamsError
from corral.server.auth import cache_salt
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError
from corral.server.limits import Tokenization
from corral.server.protocol import EmbeddingRequest
from corral.server.serving import arrival_time, check_num_sequences, prompt_error, random_id, until_disconnect


def _encode(client: EngineClient, prompts: list[str | list[int]], truncate: bool, param: str) -> list[list[int]]:
    """Checked token ids of each prompt; every text is measured before any is encoded (unless a long one
    is to be truncated)."""
    inputs = client.input_processor
    try:
        if not truncate:
            for p in prompts:
                if isinstance(p, str):
                    inputs.check_text_length(p)
        encoded = []
        for p in prompts:
            ids = inputs.tokenize(p, add_special_tokens=True, truncate=truncate)
            inputs.check_pooling_prompt(ids)
            encoded.append(ids)
    except PromptError as e:
        raise prompt_error(e, param) from None
    return encoded


async def embed_prompts(client: EngineClient, prompts: list[str | list[int]], params: PoolingParams,
                        tokenization: Tokenization, load_timeout: float, salt: str | None = None,
                        truncate: bool = False, param: str = "input",
                        arrival: float | None = None) -> list[EmbeddingRequestOutput]:
    """One pooled vector per prompt (a text or token ids), in order; 400 for what the model cannot take
    (`param` names the request field), for a model not served for embeddings too. `truncate`: the first
    max_model_len tokens of a longer prompt instead of a 400. `arrival`: when the server received the request."""
    num_seqs = check_num_sequences(client, 1, len(prompts))
    await client.admit(load_timeout, num_seqs, task="embed")
    try:
        try:
            client.input_processor.check_pooling_params(params, client.name)
        except PoolingParamsError as e:
            raise BadRequestError(str(e), param=e.param) from None
        encoded = await tokenization.run(_encode, client, prompts, truncate, param)
        request_id = random_id("embd")
        return list(await asyncio.gather(*(client.embed(f"{request_id}-{i}", ids, params, load_timeout, salt,
                                                        arrival) for i, ids in enumerate(encoded))))
    finally:
        client.release(num_seqs)


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """float: JSON numbers; base64: the little-endian float32 bytes, as the openai SDK decodes them."""
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.tolist()


def embedding_response(outputs: list[EmbeddingRequestOutput], encoding_format: str, model: str) -> dict:
    num_tokens = sum(len(o.prompt_token_ids) for o in outputs)
    return {"object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": encode_vector(o.outputs.data, encoding_format)}
                     for i, o in enumerate(outputs)],
            "model": model, "usage": {"prompt_tokens": num_tokens, "total_tokens": num_tokens}}


def add_embeddings_routes(app: FastAPI):
    @app.post("/v1/embeddings")
    async def create_embedding(body: EmbeddingRequest, request: Request):
        client = app.state.registry.get(body.model)
        request.state.model = client.name
        params = PoolingParams(dimensions=body.dimensions)
        outputs = await until_disconnect(request, embed_prompts(
            client, body.inputs(), params, app.state.tokenization, app.state.config.request_load_timeout,
            cache_salt(request, None), arrival=arrival_time(request)))
        if isinstance(outputs, Response):
            return outputs
        return JSONResponse(embedding_response(outputs, body.encoding_format, client.name))
