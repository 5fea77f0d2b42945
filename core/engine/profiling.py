import torch

from corral.backends.base import AttentionBackend, AttentionMetadata
from corral.config import EngineConfig
from corral.engine.sampler import Sampler, SamplingMetadata
from corral.layers.attention import Attention, ForwardContext
from corral.model_config import ModelConfig


@torch.inference_mode()
def profile_peak_memory(model: torch.nn.Module, backend: AttentionBackend, config: EngineConfig,
                        model_config: ModelConfig) -> int:
    """Peak bytes this process's tensors reach in a forward at the largest batch
    (max_num_batched_tokens tokens as one sequence, max_num_seqs rows of logits sampled)."""
    device = torch.device(config.device)
    mc, bs = model_config, config.block_size
    num_tokens = min(config.max_num_batched_tokens, config.max_model_len)
    num_blocks = -(-num_tokens // bs)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    caches = [torch.empty(2, num_blocks, bs, mc.num_key_value_heads, mc.head_dim, dtype=config.torch_dtype,
                          device=device) for _ in layers]
    for layer, cache in zip(layers, caches):
        layer.kv_cache = cache
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    positions = torch.arange(num_tokens, device=device)
    metadata = AttentionMetadata(
        slot_mapping=positions.clone(),
        query_start_loc=torch.tensor([0, num_tokens], dtype=torch.int32, device=device),
        seq_lens=torch.tensor([num_tokens], dtype=torch.int32, device=device),
        block_tables=torch.arange(num_blocks, dtype=torch.int32, device=device)[None],
        max_query_len=num_tokens, max_seq_len=num_tokens)
    input_ids = torch.randint(0, mc.vocab_size, (num_tokens,), device=device)
    hidden = model(input_ids, positions, ForwardContext(metadata, backend))
    rows = min(config.max_num_seqs, num_tokens)
    logits = model.compute_logits(hidden[:rows])
    temperature = torch.ones(rows, device=device)
    Sampler()(logits, SamplingMetadata(temperature=temperature, all_greedy=False, all_random=True))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - sum(c.numel() * c.element_size() for c in caches)
    for layer in layers:
        layer.kv_cache = None
    del caches, hidden, logits
    torch.cuda.empty_cache()
    return peak
