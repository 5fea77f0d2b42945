"""What an engine holds on its device, and sleep: an idle engine's weights go to host memory (pinned on
CUDA, so waking is one fast copy back), its KV cache is freed, its process and everything else stay; the
prefix cache is forgotten. Two paths:

- virtual memory (CUDA, one rank, cuda-python's bindings installed: the engine's `weights_memory` and
  `kv_memory` are set): the weights live in one virtual range and each KV cache in its own. Sleep copies the
  weights' range to the host and unmaps every page, weights and KV; the addresses stay reserved and the CUDA
  graphs are kept. Waking maps the pages back at the same addresses, copies the weights in and zeroes the
  KV pages; the graphs are replayed as they were, with no recapture. The pages are large (a few driver
  calls a layer) except an elastic KV's, which wakes with its initial grant backed.
- otherwise (CPU, several ranks, no bindings, or a driver that refused the weights' range): each weight
  tensor is copied to the host and emptied, the KV tensors (or a virtual KV's pages) and the CUDA graphs are
  dropped; waking copies the weights back, allocates (or maps) the KV again and captures the graphs again
  (the weights' addresses changed)."""
import logging
import time
from dataclasses import dataclass, field

import torch

from corral.engine.messages import EngineMemory, Sleep, SleepDone, Wake
from corral.layers.attention import Attention

logger = logging.getLogger(__name__)


class SleepError(RuntimeError):
    pass


@dataclass(slots=True)
class Slept:
    """An engine's state while asleep: the host copy of every weight, and the shape of each KV cache (or,
    with virtual memory, the host copy of the weights' range)."""

    host: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)  # (device tensor, its copy)
    kv_caches: list[tuple[Attention, torch.Size, torch.dtype]] = field(default_factory=list)
    had_graphs: bool = False
    weights_range: list[torch.Tensor] | None = None  # VirtualWeights.sleep's copy


def weight_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters, buffers and tensors modules keep as plain attributes (rotary tables), each once; the
    KV caches are not weights."""
    seen, tensors = set(), []
    for module in model.modules():
        candidates = [*module._parameters.values(), *module._buffers.values(),
                      *(v for k, v in vars(module).items() if isinstance(v, torch.Tensor) and k != "kv_cache")]
        for t in candidates:
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                tensors.append(t)
    return tensors


def memory_held(core) -> EngineMemory:
    """Weights and KV cache as held now (with virtual memory, the pages mapped), and the device memory of
    torch's allocator plus those pages."""
    model = core.runner.model
    weights = 0 if core.asleep is not None else sum(t.numel() * t.element_size() for t in weight_tensors(model))
    if core.kv_memory is not None:
        kv = core.kv_memory.mapped_bytes
    else:
        kv = sum(layer.kv_cache.numel() * layer.kv_cache.element_size() for layer in _attention_layers(model)
                 if layer.kv_cache is not None)
    device = 0
    if core.device.type == "cuda":
        device = torch.cuda.memory_reserved(core.device) + (core.kv_memory.mapped_bytes if core.kv_memory else 0)
        device += core.weights_memory.mapped_bytes if core.weights_memory else 0
    return EngineMemory(weights, kv, device)


def sleep(core) -> Slept:
    """Raises SleepError unless the engine is idle and runs on one rank."""
    if core.workers is not None:
        raise SleepError("sleep needs a single-rank engine (tensor_parallel_size 1)")
    if core.scheduler.has_unfinished_requests():
        raise SleepError("the engine has requests in flight")
    while core.has_unfinished_requests():  # a step launched ahead for requests since aborted
        core.step()
    start = time.perf_counter()
    if core.runner.history is not None:
        core.runner.history.release()
    if core.config.kv_grant_blocks is not None:  # elastic KV wakes with its initial grant, as the server rejoins it
        core.kv_cache_manager.set_grant(core.config.kv_grant_blocks)
    if core.weights_memory is not None and core.kv_memory is not None:
        slept = Slept(had_graphs=core.runner.graph_runner is not None, weights_range=core.weights_memory.sleep())
        core.kv_memory.sleep()
        core.kv_cache_manager.reset_prefix_cache()
        torch.cuda.empty_cache()
        logger.info("asleep in %.2f s: the weights' range on the host, every page unmapped, CUDA graphs kept",
                    time.perf_counter() - start)
        return slept
    runner, cuda = core.runner, core.device.type == "cuda"
    slept = Slept(had_graphs=runner.graph_runner is not None)
    with torch.inference_mode():
        for t in weight_tensors(runner.model):
            copy = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=cuda)
            copy.copy_(t, non_blocking=cuda)
            slept.host.append((t, copy))
        if cuda:
            torch.cuda.synchronize(core.device)
        for t, _ in slept.host:
            t.data = torch.empty(0, dtype=t.dtype, device=t.device)
    if core.kv_memory is not None:  # virtual KV beside plain weights: its pages go, its addresses stay
        core.kv_memory.sleep()
    else:
        for layer in _attention_layers(runner.model):
            slept.kv_caches.append((layer, layer.kv_cache.shape, layer.kv_cache.dtype))
            layer.kv_cache = None
    runner.graph_runner = None
    core.kv_cache_manager.reset_prefix_cache()  # its blocks' contents are gone
    if cuda:
        torch.cuda.empty_cache()
    logger.info("asleep in %.2f s: %d weight tensors on the host, KV cache freed", time.perf_counter() - start,
                len(slept.host))
    return slept


def wake(core, slept: Slept):
    start = time.perf_counter()
    device = core.device
    if slept.weights_range is not None:
        core.weights_memory.wake(slept.weights_range)
        core.kv_memory.wake()
        torch.cuda.synchronize(device)
        logger.info("awake in %.2f s (the same addresses: CUDA graphs kept)", time.perf_counter() - start)
        return
    with torch.inference_mode():
        for t, copy in slept.host:
            t.data = copy.to(device, non_blocking=device.type == "cuda")
        for layer, shape, dtype in slept.kv_caches:
            layer.kv_cache = torch.zeros(shape, dtype=dtype, device=device)
    if core.kv_memory is not None:
        core.kv_memory.wake()
    if slept.had_graphs:
        core.runner.capture_cuda_graphs(core.config.max_num_seqs, core.config.max_model_len)
    elif device.type == "cuda":
        torch.cuda.synchronize(device)
    logger.info("awake in %.2f s", time.perf_counter() - start)


def answer(core, message: Sleep | Wake) -> SleepDone:
    """The engine process's handling of Sleep and Wake: never raises; a refusal is the answer's error."""
    try:
        if isinstance(message, Sleep) and core.asleep is None:
            core.sleep()
        elif isinstance(message, Wake) and core.asleep is not None:
            core.wake()
    except SleepError as e:
        return SleepDone(core.asleep is not None, memory_held(core), str(e))
    return SleepDone(core.asleep is not None, memory_held(core))


def _attention_layers(model: torch.nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]
