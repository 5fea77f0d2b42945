import torch

from corral.backends.base import AttentionBackend
from corral.kernels.attention_metadata import AttentionMetadata
from corral.config import EngineConfig
from corral.engine.sampler import Sampler, SamplingMetadata
from corral.layers.attention import Attention, ForwardContext
from corral.model_config import ModelConfig


def profiling_batch(config: EngineConfig, vocab_size: int, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, int]:
    """The largest step the scheduler can make: max_num_batched_tokens prompt tokens in sequences of
    at most max_model_len, each on blocks of its own. (input ids, positions, metadata, KV blocks)."""
    num_tokens, bs = config.max_num_batched_tokens, config.block_size
    seq_len = min(num_tokens, config.max_model_len)
    lens = [seq_len] * (num_tokens // seq_len) + ([num_tokens % seq_len] if num_tokens % seq_len else [])
    blocks_per_seq = -(-seq_len // bs)
    num_blocks = blocks_per_seq * len(lens)
    positions = torch.cat([torch.arange(n) for n in lens])
    first_slot = torch.repeat_interleave(torch.arange(len(lens)) * blocks_per_seq * bs, torch.tensor(lens))
    int32 = dict(dtype=torch.int32, device=device)
    metadata = AttentionMetadata(
        slot_mapping=(first_slot + positions).to(device),
        query_start_loc=torch.tensor([0] + lens, **int32).cumsum(0, dtype=torch.int32),
        seq_lens=torch.tensor(lens, **int32),
        block_tables=torch.arange(num_blocks, **int32).view(len(lens), blocks_per_seq),
        max_query_len=seq_len, max_seq_len=seq_len)
    input_ids = torch.randint(0, vocab_size, (num_tokens,), device=device)
    return input_ids, positions.to(device), metadata, num_blocks


@torch.inference_mode()
def profile_peak_memory(model: torch.nn.Module, backend: AttentionBackend, config: EngineConfig,
                        model_config: ModelConfig) -> int:
    """Peak bytes this process's tensors reach in a forward of the largest step (profiling_batch),
    max_num_seqs rows of logits sampled."""
    device = torch.device(config.device)
    mc = model_config
    input_ids, positions, metadata, num_blocks = profiling_batch(config, mc.vocab_size, device)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    caches = [torch.empty(2, num_blocks, config.block_size, layer.num_kv_heads, layer.head_dim,  # this rank's heads
                          dtype=config.torch_dtype, device=device) for layer in layers]
    for layer, cache in zip(layers, caches):
        layer.kv_cache = cache
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    hidden = model(input_ids, positions, ForwardContext(metadata, backend))
    rows = min(config.max_num_seqs, input_ids.shape[0])
    logits = None
    if getattr(model, "lm_head", True) is not None:  # an embedding model has none: it pools the hidden states
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
