"""The one function /api/embed and /api/embeddings call for vectors."""
from corral.pooling_params import PoolingParams
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError
from corral.server.limits import Tokenization
from corral.server.serving_embedding import embed_prompts

LOAD_TIMEOUT = 600.0  # seconds a request waits for its model to load, as the OpenAI routes' default


async def embed(client: EngineClient, model: str, texts: list[str], truncate: bool,
                dimensions: int | None) -> tuple[list[list[float]], int]:
    """(one vector per text, prompt tokens) from a model served for embeddings, through the OpenAI route's
    path; `truncate`: a text past the context keeps its first tokens. Any other model: Ollama's 400."""
    try:
        outputs = await embed_prompts(client, texts, PoolingParams(dimensions=dimensions), Tokenization(),
                                      LOAD_TIMEOUT, truncate=truncate)
    except BadRequestError as e:
        if e.code == "model_not_supported":
            raise BadRequestError(f'model "{model}" does not support embeddings', param="model") from None
        raise
    return [o.outputs.embedding for o in outputs], sum(len(o.prompt_token_ids) for o in outputs)
