import torch

from corral.backends.base import AttentionBackend
from corral.kernels.attention_metadata import AttentionMetadata
from corral.config import EngineConfig
from corral.engine.sampler import Sampler, SamplingMetadata
from corral.layers.attention import Attention, ForwardContext
from corral.model_config import ModelConfig


def step_batch(query_lens: list[int], seq_lens: list[int], block_size: int, device: torch.device,
               num_decodes: int = 0) -> tuple[torch.Tensor, AttentionMetadata, int]:
    """A step's positions and metadata for sequences of these query and total lengths, each on blocks of its
    own, numbered from 0 (positions, metadata, KV blocks)."""
    blocks_per_seq = -(-max(seq_lens) // block_size)
    num_blocks = blocks_per_seq * len(seq_lens)
    positions = torch.cat([torch.arange(n - q, n) for q, n in zip(query_lens, seq_lens)])
    first_slot = torch.arange(len(seq_lens)) * blocks_per_seq * block_size
    int32 = dict(dtype=torch.int32, device=device)
    metadata = AttentionMetadata(
        slot_mapping=(torch.repeat_interleave(first_slot, torch.tensor(query_lens)) + positions).to(device),
        query_start_loc=torch.tensor([0] + query_lens, **int32).cumsum(0, dtype=torch.int32),
        seq_lens=torch.tensor(seq_lens, **int32),
        block_tables=torch.arange(num_blocks, **int32).view(len(seq_lens), blocks_per_seq),
        max_query_len=max(query_lens), max_seq_len=max(seq_lens), num_decodes=num_decodes)
    return positions.to(device), metadata, num_blocks


def profiling_batch(config: EngineConfig, vocab_size: int, device: torch.device
                    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, int]:
    """The largest step the scheduler can make: max_num_batched_tokens prompt tokens in sequences of
    at most max_model_len, each on blocks of its own. (input ids, positions, metadata, KV blocks)."""
    num_tokens = config.max_num_batched_tokens
    seq_len = min(num_tokens, config.max_model_len)
    lens = [seq_len] * (num_tokens // seq_len) + ([num_tokens % seq_len] if num_tokens % seq_len else [])
    positions, metadata, num_blocks = step_batch(lens, lens, config.block_size, device)
    return torch.randint(0, vocab_size, (num_tokens,), device=device), positions, metadata, num_blocks


def warm_up_batches(config: EngineConfig, num_kv_heads: int) -> list[tuple[list[int], list[int], int]]:
    """(query lengths, sequence lengths, decodes first) of the small steps whose kernels neither the profiling
    step nor the CUDA graphs compile: a decode beside a prompt of each length up to 32 (the varlen kernel's
    tile height follows the longest query, and a few decodes take the split decode kernel), and a prompt
    alone (one sampled row). Without CUDA graphs, a decode-only step of the smallest batch size of each of
    default_split's rules too. Triton compiles a kernel for each such shape the first time it meets it: at
    start rather than while requests wait."""
    batches = [([1, n], [40, n], 1) for n in (2, 4, 8, 16, 32)] + [([8], [8], 0)]
    if config.enforce_eager:
        from corral.kernels.decode_attention import default_split  # triton: CUDA engines only
        splits = {}
        for n in range(1, config.max_num_seqs + 1):
            splits.setdefault(default_split(n, num_kv_heads), n)
        batches += [([1] * n, [40] * n, 0) for n in splits.values()]
    return batches


def _attach_kv_caches(layers: list[Attention], num_blocks: int, config: EngineConfig,
                      device: torch.device) -> list[torch.Tensor]:
    """Fresh KV caches of num_blocks blocks on the attention layers (this rank's heads), returned."""
    caches = [torch.zeros(2, num_blocks, config.block_size, layer.num_kv_heads, layer.head_dim,
                          dtype=config.kv_dtype, device=device) for layer in layers]
    for layer, cache in zip(layers, caches):
        layer.kv_cache = cache
    return caches


def _forward_and_sample(model: torch.nn.Module, backend: AttentionBackend, input_ids: torch.Tensor,
                        positions: torch.Tensor, metadata: AttentionMetadata, rows):
    """A synthetic step's forward, then its `rows` sampled on the sampler's one-pass path (an embedding model
    has no lm_head: it pools the hidden states)."""
    hidden = model(input_ids, positions, ForwardContext(metadata, backend))
    if getattr(model, "lm_head", True) is not None:
        logits = model.compute_logits(hidden[rows])
        temperature = torch.ones(logits.shape[0], device=logits.device)
        Sampler()(logits, SamplingMetadata(temperature=temperature, all_greedy=False, all_random=True))


@torch.inference_mode()
def profile_peak_memory(model: torch.nn.Module, backend: AttentionBackend, config: EngineConfig,
                        model_config: ModelConfig) -> int:
    """Peak bytes this process's tensors reach in a forward of the largest step (profiling_batch),
    max_num_seqs rows of logits sampled."""
    device = torch.device(config.device)
    input_ids, positions, metadata, num_blocks = profiling_batch(config, model_config.vocab_size, device)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    caches = _attach_kv_caches(layers, num_blocks, config, device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    _forward_and_sample(model, backend, input_ids, positions, metadata, slice(config.max_num_seqs))
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - sum(c.numel() * c.element_size() for c in caches)
    for layer in layers:
        layer.kv_cache = None
    del caches
    torch.cuda.empty_cache()
    return peak


@torch.inference_mode()
def warm_up_kernels(model: torch.nn.Module, backend: AttentionBackend, config: EngineConfig,
                    model_config: ModelConfig):
    """Run each warm_up_batches step through the model and the sampler, on KV caches of its own (the
    layers' own caches, if any, are theirs again afterwards)."""
    device = torch.device(config.device)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    own_caches = [layer.kv_cache for layer in layers]
    for query_lens, seq_lens, num_decodes in warm_up_batches(config, layers[0].num_kv_heads if layers else 1):
        positions, metadata, num_blocks = step_batch(query_lens, seq_lens, config.block_size, device, num_decodes)
        _attach_kv_caches(layers, num_blocks, config, device)
        input_ids = torch.randint(0, model_config.vocab_size, positions.shape, device=device)
        _forward_and_sample(model, backend, input_ids, positions, metadata, metadata.query_start_loc[1:].long() - 1)
    for layer, cache in zip(layers, own_caches):
        layer.kv_cache = cache
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()  # the KV cache is sized already: hand back what these steps took
