"""Memory planning on a GPU: the KV cache's share of the device, and what to say when a model does
not fit. Pure arithmetic on byte counts, so every message can be checked without a GPU."""
from corral.config import ConfigError
from corral.model_config import ModelConfig

GiB = 2**30
FREE_MARGIN = 0.98  # of the memory free now, what the KV cache may take (the allocator's slack)


def kv_cache_budget(total: int, free: int, gpu_memory_utilization: float, peak: int, in_use: int) -> int:
    """Bytes for the KV cache: the model's share of the device (gpu_memory_utilization x total)
    less its peak (`peak`: weights plus the activations of a profiling forward), and no more than
    is free now less those activations, which are freed at this point but come back with the
    first large step (other processes, or other models' engines, hold the rest of the device).
    `in_use`: the bytes this process holds now, its weights."""
    share = int(total * gpu_memory_utilization)
    if share - peak <= 0:
        raise ConfigError(
            f"no room for a KV cache: weights and activations take {peak / GiB:.2f} GiB of a "
            f"{share / GiB:.2f} GiB share (gpu_memory_utilization {gpu_memory_utilization} of "
            f"{total / GiB:.1f} GiB); raise gpu_memory_utilization or lower max_num_batched_tokens")
    activations = max(peak - in_use, 0)
    budget = min(share - peak, int(free * FREE_MARGIN) - activations)
    if budget <= 0:
        raise ConfigError(
            f"no room for a KV cache: only {free / GiB:.2f} GiB of the device's {total / GiB:.1f} GiB "
            f"is free after loading the weights, and the activations need {activations / GiB:.2f} GiB "
            f"of it (other processes or models hold the rest)")
    return budget


def does_not_fit_message(architecture: str, model_config: ModelConfig, itemsize: int, total: int,
                         gpu_memory_utilization: float) -> str:
    weights = model_config.num_weight_params() * itemsize
    share = total * gpu_memory_utilization
    return (f"{architecture} does not fit: its weights need about {weights / GiB:.1f} GiB, its share is "
            f"{share / GiB:.1f} GiB (gpu_memory_utilization {gpu_memory_utilization} of {total / GiB:.1f} GiB)")
