import logging
import time
from collections.abc import Callable

import torch

from corral.config import ConfigError, EngineConfig
from corral.distributed.group import TensorParallelGroup, rank_device
from corral.engine import sleep
from corral.engine.kv_cache_manager import KVCacheManager
from corral.engine.messages import SchedulerStats, StartupTimes
from corral.engine.model_runner import InFlight, ModelRunner
from corral.engine.pooling import PoolingRunner
from corral.engine.request import Request, RequestStatus
from corral.engine.scheduler import Scheduler, SchedulerOutput
from corral.engine.structured_output import StructuredOutputManager
from corral.engine.token_history import TokenHistory
from corral.engine.virtual_memory import CudaDriverError
from corral.engine.virtual_weights import VirtualWeights
from corral.engine.worker import build_rank, kv_bytes_per_token
from corral.engine.worker_processes import WorkerProcesses
from corral.model_config import ModelConfig
from corral.outputs import EngineCoreOutput, TokenLogprob
from corral.pooling_params import pooler_config
from corral.registry.plugins import PluginManager

logger = logging.getLogger(__name__)


class EngineCore:
    """The model, its KV cache, the scheduler and the runner: token ids in, token ids out. With
    tensor_parallel_size N, this is rank 0: ranks 1..N-1 run in worker processes, and every forward
    here is broadcast to them (the scheduler, KV manager and sampler run only here)."""

    def __init__(self, config: EngineConfig, plugin_manager: PluginManager | None = None,
                 on_worker_failure: Callable[[str], None] | None = None):
        started = time.perf_counter()
        if problem := config.kv_cache_dtype_problem():
            raise ConfigError(problem)
        self.config = config
        self.startup = StartupTimes()
        self.model_config = ModelConfig.from_hf(config.hf_config)
        self.pooler_config = pooler_config(config.model, config.hf_config, config.task, config.pooling,
                                           config.normalize)  # None: the model generates
        plugin_manager = plugin_manager or PluginManager()
        model_cls = plugin_manager.architectures().resolve(config.architectures)
        self.device = torch.device(config.device) if config.tensor_parallel_size == 1 else \
            rank_device(config.device, 0)
        self.workers = WorkerProcesses(config, model_cls) if config.tensor_parallel_size > 1 else None
        try:
            model, backend, kv_caches, self.num_blocks, self.kv_memory = build_rank(
                config, self.model_config, model_cls, self.device,
                self.workers.group if self.workers else TensorParallelGroup(), self.startup)
        except BaseException as e:
            if self.workers is None:
                raise
            error = self.workers.explain(e)  # which rank failed, and why
            self.workers.close()
            raise error from e
        graphs_started = time.perf_counter()
        # with virtual KV memory, the weights too: sleep then keeps every address (and the CUDA graphs)
        self.weights_memory = self._move_weights(model) if self.kv_memory is not None else None
        prefix_caching = config.enable_prefix_caching and (self.pooler_config is None or
                                                           self.pooler_config.prefix_cacheable)
        self.kv_cache_manager = KVCacheManager(self.num_blocks, config.block_size, prefix_caching, self.kv_memory,
                                               config.kv_grant_blocks)
        self.scheduler = Scheduler(self.kv_cache_manager, config.max_num_seqs, config.max_num_batched_tokens,
                                   config.max_model_len, config.num_scheduler_steps)
        self.in_flight: tuple[SchedulerOutput, int, InFlight] | None = None  # launched, not yet read
        self.current: tuple[SchedulerOutput, int, InFlight] | None = None  # being read, step by step
        self.current_step = 0
        self.structured_output = StructuredOutputManager(config.model, self.model_config.vocab_size)
        self.runner = ModelRunner(model, kv_caches, backend, config.block_size, self.device,
                                  self.model_config.vocab_size, config.seed, self.structured_output,
                                  self.workers.steps if self.workers else None,
                                  TokenHistory(config.max_model_len, self.device))
        self.pooling = PoolingRunner(self.runner, self.pooler_config) if self.pooler_config else None
        if (self.device.type == "cuda" and not config.enforce_eager and backend.name == "triton"
                and self.pooling is None):  # graphs are for decode steps
            self.runner.capture_cuda_graphs(config.max_num_seqs, config.max_model_len)
        self.startup.cuda_graphs = time.perf_counter() - graphs_started
        self.asleep: sleep.Slept | None = None  # the host copy of the weights while asleep
        if self.workers is not None:
            self.workers.serve(on_worker_failure)
        self.startup.engine = time.perf_counter() - started
        logger.info("engine ready in %.1f s (weights %.1f s, memory profile %.1f s, kernels %.1f s, KV cache %.1f s, "
                    "CUDA graphs %.1f s)", self.startup.engine, self.startup.weights, self.startup.memory_profile,
                    self.startup.kernels, self.startup.kv_cache, self.startup.cuda_graphs)
        capacity = self.num_blocks * config.block_size
        logger.info("KV cache: %d tokens (%d blocks of %d), %.1f sequences of max_model_len %d at once",
                    capacity, self.num_blocks, config.block_size, capacity / config.max_model_len,
                    config.max_model_len)

    def _move_weights(self, model) -> VirtualWeights | None:
        try:
            return VirtualWeights(self.kv_memory.driver, sleep.weight_tensors(model))
        except CudaDriverError as e:  # the tensors moved so far stay valid: their pages stay mapped
            logger.warning("CUDA virtual memory refused the weights (%s): sleep will copy them out and capture "
                           "the CUDA graphs again at wake", e)
            return None

    def _kv_bytes_per_token(self) -> int:
        return kv_bytes_per_token(self.config, self.model_config)

    def sleep(self):
        """Free this idle engine's device memory, keeping the weights on the host (corral.engine.sleep)."""
        self.asleep = sleep.sleep(self)

    def wake(self):
        sleep.wake(self, self.asleep)
        self.asleep = None

    def shutdown(self):
        """Stop the other ranks (a single-rank engine has nothing to stop)."""
        if self.workers is not None:
            self.workers.close()

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
        device never waits for the host between groups. An embedding model's step pools instead."""
        if self.pooling is not None:
            return self.pooling.step(self.scheduler)
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
                if continuation is not None:  # a grammar's bitmask waits for this step's update
                    defer = num_steps == 1 and any(s.request.grammar is not None for s in continuation.scheduled)
                    self.in_flight = (continuation, num_steps, self.runner.launch(
                        continuation, num_steps, previous=launched, defer_sampling=defer))
        scheduler_output, num_steps, launched = self.current
        step = self.current_step
        runner_output = launched.step_result(step)
        self.current_step += 1
        if self.current_step == num_steps:
            self.current = None
        updated = self.scheduler.update(scheduler_output, runner_output.sampled_token_ids, after_first_step=step > 0)
        if self.current is None and self.in_flight is not None and self.in_flight[2].pending is not None:
            self.runner.sample(self.in_flight[2])  # while its forward runs, now that the grammars took this step
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
        kv, scheduler = self.kv_cache_manager, self.scheduler
        num_needed = 0  # only elastic KV sharing reads it; it walks the running requests, each step
        if self.config.kv_grant_blocks is not None:
            num_needed = kv.num_needed_blocks(scheduler.running, scheduler.waiting, scheduler.max_num_seqs,
                                              scheduler.max_model_len)
        return SchedulerStats(num_running=len(scheduler.running), num_waiting=len(scheduler.waiting),
                              kv_cache_usage=kv.usage, num_kv_blocks=kv.num_blocks,
                              num_free_kv_blocks=kv.num_free_blocks, prefix_cache_hit_tokens=kv.num_hit_tokens,
                              prefix_cache_query_tokens=kv.num_query_tokens,
                              num_preemptions=scheduler.num_preemptions, num_needed_kv_blocks=num_needed)
