import contextlib
import logging
import time

import torch

from corral.backends.base import get_backend
from corral.config import ConfigError, EngineConfig
from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.memory import does_not_fit_message, kv_cache_budget
from corral.engine.messages import SchedulerStats
from corral.engine.model_runner import InFlight, ModelRunner
from corral.engine.profiling import profile_peak_memory
from corral.engine.request import Request, RequestStatus
from corral.engine.scheduler import Scheduler, SchedulerOutput
from corral.engine.structured_output import StructuredOutputManager
from corral.model_config import ModelConfig
from corral.model_loader import load_weights
from corral.outputs import EngineCoreOutput, TokenLogprob
from corral.registry.plugins import PluginManager

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


class EngineCore:
    """The model, its KV cache, the scheduler and the runner: token ids in, token ids out."""

    def __init__(self, config: EngineConfig, plugin_manager: PluginManager | None = None):
        self.config = config
        self.device = torch.device(config.device)
        self.model_config = ModelConfig.from_hf(config.hf_config)
        plugin_manager = plugin_manager or PluginManager()
        model_cls = plugin_manager.architectures().resolve(config.architectures)
        start = time.perf_counter()
        torch.manual_seed(config.seed)
        try:
            with torch.device(self.device), default_dtype(config.torch_dtype):
                model = model_cls(self.model_config)  # allocated in its final dtype: no fp32 copy
            if config.load_format == "dummy":
                for param in model.parameters():
                    param.data.uniform_(-1e-3, 1e-3)
            else:
                load_weights(model, config.model, config.torch_dtype, self.device)
        except torch.OutOfMemoryError:
            raise ConfigError(self._does_not_fit(model_cls)) from None
        model.eval()
        logger.info("loaded %s (%s) in %.1f s", config.model, model_cls.__name__, time.perf_counter() - start)
        backend = get_backend(config.attention_backend, self.device)
        peak = profile_peak_memory(model, backend, config, self.model_config) if self.device.type == "cuda" else 0
        self.num_blocks = self._num_kv_blocks(peak)
        kv_caches = self._allocate_kv_caches(self.num_blocks)
        self.kv_cache_manager = KVCacheManager(self.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv_cache_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_model_len, config.num_scheduler_steps)
        self.in_flight: tuple[SchedulerOutput, int, InFlight] | None = None  # launched, not yet read
        self.current: tuple[SchedulerOutput, int, InFlight] | None = None  # being read, step by step
        self.current_step = 0
        self.structured_output = StructuredOutputManager(config.model, self.model_config.vocab_size)
        self.runner = ModelRunner(model, kv_caches, backend, config.block_size, self.device,
                                  self.model_config.vocab_size, config.seed, self.structured_output)
        if self.device.type == "cuda" and not config.enforce_eager and backend.name == "triton":
            self.runner.capture_cuda_graphs(config.max_num_seqs, config.max_model_len)

    def _kv_bytes_per_token(self) -> int:
        mc = self.model_config
        itemsize = self.config.torch_dtype.itemsize
        return 2 * mc.num_hidden_layers * mc.num_key_value_heads * mc.head_dim * itemsize

    def _does_not_fit(self, model_cls) -> str:
        itemsize = self.config.torch_dtype.itemsize
        total = torch.cuda.get_device_properties(self.device).total_memory
        return does_not_fit_message(model_cls.__name__, self.model_config, itemsize, total,
                                    self.config.gpu_memory_utilization)

    def _num_kv_blocks(self, peak_bytes: int) -> int:
        config = self.config
        block_bytes = self._kv_bytes_per_token() * config.block_size
        if config.num_kv_blocks is not None:
            num_blocks = config.num_kv_blocks
        else:
            budget = config.kv_cache_memory_bytes
            if budget is None:
                budget = self._kv_budget(peak_bytes) if self.device.type == "cuda" else CPU_KV_CACHE_BYTES
            num_blocks = budget // block_bytes
        capacity = num_blocks * config.block_size
        if capacity < config.max_model_len:
            raise ConfigError(
                f"the KV cache holds {capacity} tokens ({num_blocks} blocks of {config.block_size}), less than "
                f"max_model_len {config.max_model_len}; lower max_model_len or give the model more memory "
                f"({block_bytes * -(-config.max_model_len // config.block_size) / 2**30:.2f} GiB needed)")
        return num_blocks

    def _kv_budget(self, peak_bytes: int) -> int:
        """This model's share of the GPU, less its weights and peak activations."""
        free, total = torch.cuda.mem_get_info(self.device)
        return kv_cache_budget(total, free, self.config.gpu_memory_utilization, peak_bytes,
                               torch.cuda.memory_allocated(self.device))

    def _allocate_kv_caches(self, num_blocks: int) -> list[torch.Tensor]:
        mc = self.model_config
        shape = (2, num_blocks, self.config.block_size, mc.num_key_value_heads, mc.head_dim)
        return [torch.zeros(shape, dtype=self.config.torch_dtype, device=self.device)
                for _ in range(mc.num_hidden_layers)]

    def add_request(self, request: Request):
        """`request` passed the InputProcessor's checks; the engine trusts them. A grammar is compiled
        (once per grammar text) here, in the engine's process."""
        self.structured_output.init_request(request)
        self.scheduler.add_request(request)

    def abort_requests(self, request_ids: list[str]):
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)

    def reset_prefix_cache(self):
        """Forget the prefix cache (benchmarks: each timed run starts cold). Only when idle."""
        if self.has_unfinished_requests() or not self.kv_cache_manager.reset_prefix_cache():
            raise RuntimeError("reset_prefix_cache needs an idle engine: requests still hold KV blocks")

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests() or self.in_flight is not None or self.current is not None

    def step(self) -> list[EngineCoreOutput]:
        """Outputs of one decode step: a multi-step group's tokens come back step by step, as the
        device produces them, so that a client sees one token per chunk. When the scheduler allows
        it, the next group is launched before this one's tokens come back (async scheduling): the
        device never waits for the host between groups."""
        if self.current is None:
            if self.in_flight is None:
                scheduler_output = self.scheduler.schedule()
                if not scheduler_output.scheduled:
                    return []
                num_steps = self.scheduler.num_decode_steps(scheduler_output)
                self.in_flight = (scheduler_output, num_steps, self.runner.launch(scheduler_output, num_steps))
            self.current, self.current_step = self.in_flight, 0
            scheduler_output, num_steps, launched = self.current
            self.in_flight = None
            if self.config.async_scheduling:
                continuation = self.scheduler.schedule_continuation(scheduler_output, num_steps)
                if continuation is not None:
                    self.in_flight = (continuation, num_steps,
                                      self.runner.launch(continuation, num_steps, previous=launched))
        scheduler_output, num_steps, launched = self.current
        step = self.current_step
        runner_output = launched.step_result(step)
        self.current_step += 1
        if self.current_step == num_steps:
            self.current = None
        updated = self.scheduler.update(scheduler_output, runner_output.sampled_token_ids, after_first_step=step > 0)
        logprobs = runner_output.logprobs
        by_request = {}
        if logprobs is not None:
            samplers = [s.request for s in scheduler_output.scheduled if s.samples]
            by_request = {r.request_id: lp for r, lp in zip(samplers, logprobs)}
        outputs = []
        for request, token_ids in updated:
            entries = by_request.get(request.request_id)
            new_logprobs = None
            if entries is not None:
                (token, logprob, rank), top = entries[0], entries[1:]
                new_logprobs = [TokenLogprob(token, logprob, rank, {t: lp for t, lp, _ in top})]
            outputs.append(EngineCoreOutput(request.request_id, token_ids, new_logprobs, request.finish_reason,
                                            request.stop_reason, request.num_cached_tokens or 0))
        return outputs

    def stats(self) -> SchedulerStats:
        kv = self.kv_cache_manager
        return SchedulerStats(num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
                              kv_cache_usage=kv.usage, num_kv_blocks=self.num_blocks,
                              num_free_kv_blocks=kv.num_free_blocks, prefix_cache_hit_tokens=kv.num_hit_tokens,
                              prefix_cache_query_tokens=kv.num_query_tokens,
                              num_preemptions=self.scheduler.num_preemptions)
