"""One rank of an engine: its shard of the model and of the KV cache. Rank 0 is built in the engine's
process, beside the scheduler; ranks 1..N-1 in worker processes (run_worker) that build the same
way, then run every forward that rank 0 broadcasts. Collectives pair up because every rank makes
the same calls in the same order: load, profile, plan, capture, then forward after forward."""
import contextlib
import logging
import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from corral.backends.base import AttentionBackend, get_backend
from corral.config import ConfigError, EngineConfig
from corral.distributed.group import (RENDEZVOUS_TIMEOUT, TensorParallelGroup, building, connect, kv_heads_per_rank,
                                      rank_device)
from corral.distributed.step_broadcast import StepBroadcast
from corral.engine import virtual_memory
from corral.engine.kv_memory import VirtualKVCaches
from corral.engine.memory import does_not_fit_message, kv_cache_budget
from corral.engine.messages import StartupTimes
from corral.engine.model_runner import ModelRunner
from corral.engine.pooling import as_embedding_model
from corral.engine.profiling import profile_peak_memory, warm_up_kernels
from corral.layers.rotary import shared_rope_tables
from corral.model_config import ModelConfig
from corral.model_loader import load_weights

logger = logging.getLogger(__name__)

CPU_KV_CACHE_BYTES = 1 << 30


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_rank(config: EngineConfig, model_config: ModelConfig, model_cls, device: torch.device,
               group: TensorParallelGroup, times: StartupTimes | None = None
               ) -> tuple[torch.nn.Module, AttentionBackend, list[torch.Tensor], int, VirtualKVCaches | None]:
    """This rank's model, attention backend, KV caches and their number of blocks (the same on
    every rank: the one with the least memory decides), and the caches' virtual memory where a
    single-rank CUDA engine has it (else None: plain tensors). `times`: filled with what each part took."""
    times = times if times is not None else StartupTimes()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    try:
        with torch.device(device), default_dtype(config.torch_dtype), building(group), shared_rope_tables():
            model = model_cls(model_config)  # allocated in its final dtype, this rank's shard only
        if config.task == "embed":
            as_embedding_model(model)
        if config.load_format == "dummy":
            for param in model.parameters():
                param.data.uniform_(-1e-3, 1e-3)
        else:
            load_weights(model, config.model)
    except torch.OutOfMemoryError:
        total = torch.cuda.get_device_properties(device).total_memory
        raise ConfigError(does_not_fit_message(model_cls.__name__, model_config, config.torch_dtype.itemsize,
                                               total, config.gpu_memory_utilization)) from None
    model.eval()
    times.weights = time.perf_counter() - start
    if group.rank == 0:
        logger.info("loaded %s (%s%s) in %.1f s", config.model, model_cls.__name__,
                    f", {group.size} ranks" if group.size > 1 else "", times.weights)
    backend = get_backend(config.attention_backend, device)
    start = time.perf_counter()
    peak = profile_peak_memory(model, backend, config, model_config) if device.type == "cuda" else 0
    num_blocks = group.min(num_kv_blocks(config, model_config, device, peak))
    times.memory_profile = time.perf_counter() - start
    check_kv_capacity(config, model_config, num_blocks)
    if device.type == "cuda" and backend.name == "triton":
        start = time.perf_counter()
        warm_up_kernels(model, backend, config, model_config)
        times.kernels = time.perf_counter() - start
    start = time.perf_counter()
    virtual = group.size == 1 and virtual_memory.available(device)
    kv_caches, kv_memory = allocate_kv_caches(config, model_config, num_blocks, device, virtual)
    times.kv_cache = time.perf_counter() - start
    return model, backend, kv_caches, num_blocks, kv_memory


def kv_bytes_per_token(config: EngineConfig, model_config: ModelConfig) -> int:
    """On one rank, which holds its share of the KV heads."""
    mc = model_config
    heads = kv_heads_per_rank(mc.num_key_value_heads, config.tensor_parallel_size)
    return 2 * mc.num_hidden_layers * heads * mc.head_dim * config.kv_dtype.itemsize


def num_kv_blocks(config: EngineConfig, model_config: ModelConfig, device: torch.device, peak_bytes: int) -> int:
    """What this rank's memory holds: num_kv_blocks, or the budget's worth (kv_cache_memory_bytes,
    else this model's share of the GPU less its weights and peak activations; 1 GiB on CPU)."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    budget = config.kv_cache_memory_bytes
    if budget is None and device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = kv_cache_budget(total, free, config.gpu_memory_utilization, peak_bytes,
                                 torch.cuda.memory_allocated(device))
    elif budget is None:
        budget = CPU_KV_CACHE_BYTES
    return budget // (kv_bytes_per_token(config, model_config) * config.block_size)


def check_kv_capacity(config: EngineConfig, model_config: ModelConfig, num_blocks: int):
    capacity = num_blocks * config.block_size
    if capacity < config.max_model_len:
        block_bytes = kv_bytes_per_token(config, model_config) * config.block_size
        raise ConfigError(
            f"the KV cache holds {capacity} tokens ({num_blocks} blocks of {config.block_size}), less than "
            f"max_model_len {config.max_model_len}; lower max_model_len or give the model more memory "
            f"({block_bytes * -(-config.max_model_len // config.block_size) / 2**30:.2f} GiB needed)")
    grant = config.kv_grant_blocks
    if grant is not None and min(grant, num_blocks) * config.block_size < config.max_model_len:
        raise ConfigError(f"kv_grant_blocks {grant} holds {grant * config.block_size} tokens, less than "
                          f"max_model_len {config.max_model_len}: the engine would start with no room for one "
                          f"sequence of max_model_len")


def allocate_kv_caches(config: EngineConfig, model_config: ModelConfig, num_blocks: int, device: torch.device,
                       virtual: bool = False) -> tuple[list[torch.Tensor], VirtualKVCaches | None]:
    """One zeroed cache per layer: plain tensors, or (`virtual`) views over virtual ranges, every block
    backed, or with elastic KV (kv_grant_blocks) only the initial grant's (KVCacheManager.set_grant maps
    and unmaps the rest)."""
    mc = model_config
    heads = kv_heads_per_rank(mc.num_key_value_heads, config.tensor_parallel_size)
    shape = (2, num_blocks, config.block_size, heads, mc.head_dim)
    if not virtual:
        return [torch.zeros(shape, dtype=config.kv_dtype, device=device)
                for _ in range(mc.num_hidden_layers)], None
    block_bytes = config.block_size * heads * mc.head_dim * config.kv_dtype.itemsize
    elastic = config.kv_grant_blocks is not None
    wanted = min(num_blocks, config.kv_grant_blocks) if elastic else num_blocks
    try:
        memory = VirtualKVCaches(virtual_memory.CudaDriver(device), mc.num_hidden_layers, num_blocks, block_bytes,
                                 config.kv_grant_blocks)
        refused = None if memory.num_backed_blocks >= wanted else f"{memory.num_backed_blocks} of {wanted} blocks"
    except virtual_memory.CudaDriverError as e:
        memory, refused = None, str(e)
    if refused is not None and elastic:
        raise torch.OutOfMemoryError(f"CUDA out of memory: the KV caches' virtual memory mapped {refused}")
    if refused is not None:  # what the plain allocation makes of it is the answer
        logger.warning("CUDA virtual memory could not back the KV caches (%s): plain tensors instead; sleep "
                       "will free them and capture the CUDA graphs again at wake", refused)
        if memory is not None:
            memory.close()
        return allocate_kv_caches(config, model_config, num_blocks, device, virtual=False)
    return memory.tensors(shape, config.kv_dtype), memory


def run_worker(rank: int, config: EngineConfig, model_cls, port: int, conn, num_threads: int,
               log_level: int = logging.INFO):
    """Entry point of rank `rank`'s process. Its failure goes to rank 0 through `conn` (one line);
    rank 0 going away (`conn` closes) ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides when its ranks stop
    logging.basicConfig(level=log_level, format=f"%(levelname)s rank {rank} %(name)s: %(message)s")
    threading.Thread(target=_exit_with_parent, args=(conn,), daemon=True).start()
    try:
        device = rank_device(config.device, rank)
        config.device = str(device)  # this process's copy: everything below runs on this rank's device
        if device.type == "cuda":
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(num_threads)
        store = dist.TCPStore("127.0.0.1", port, None, False, timeout=RENDEZVOUS_TIMEOUT)
        group = connect(rank, config.tensor_parallel_size, store, device)
        model_config = ModelConfig.from_hf(config.hf_config)
        model, backend, kv_caches, _, _ = build_rank(config, model_config, model_cls, device, group)
        runner = ModelRunner(model, kv_caches, backend, config.block_size, device, model_config.vocab_size)
        if device.type == "cuda" and not config.enforce_eager and backend.name == "triton":
            runner.capture_cuda_graphs(config.max_num_seqs, config.max_model_len)
        steps = StepBroadcast(group, device)
        with torch.inference_mode():
            while (step := steps.receive()) is not None:
                runner._forward(*step)
    except Exception as e:
        logger.exception("tensor-parallel rank %d failed", rank)
        with contextlib.suppress(OSError):
            conn.send(f"{type(e).__name__}: {e}")
        os._exit(1)


def _exit_with_parent(conn):
    """Rank 0 never writes to `conn`: it closing means rank 0's process is gone."""
    with contextlib.suppress(EOFError, OSError):
        conn.recv()
    os._exit(0)
