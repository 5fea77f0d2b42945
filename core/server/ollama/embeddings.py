"""The one function /api/embed and /api/embeddings call for vectors."""
from corral.server.engine_client import EngineClient
from corral.server.errors import BadRequestError


async def embed(client: EngineClient, model: str, texts: list[str], truncate: bool,
                dimensions: int | None) -> tuple[list[list[float]], int]:
    """(one vector per text, prompt tokens) from a model served for embeddings. No model is served for
    embeddings yet: the embeddings work (POST /v1/embeddings, `task = "embed"`) fills this in."""
    raise BadRequestError(f'model "{model}" does not support embeddings', param="model")
