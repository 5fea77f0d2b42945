"""Requests taken through the KV cache manager alone, as the scheduler admits them: shared by its tests."""
from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.request import Request
from corral.sampling_params import SamplingParams


def req(request_id: str, tokens: list[int]) -> Request:
    return Request(request_id, tokens, SamplingParams())


def admit(kv: KVCacheManager, request: Request) -> list[int] | None:
    blocks, num_computed = kv.get_computed_blocks(request)
    block_ids = kv.allocate(request, request.num_tokens - num_computed, blocks)
    if block_ids is not None:
        request.num_computed_tokens = request.num_tokens
    return block_ids
