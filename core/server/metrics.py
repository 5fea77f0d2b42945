"""Prometheus metrics, each labelled by model, in a CollectorRegistry of the app's own (no globals)."""
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from corral.engine.messages import SchedulerStats
from corral.server.engine_client import ModelState

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.http_requests = Counter("corral_http_requests", "HTTP requests by model, endpoint and status code",
                                     ["model", "endpoint", "status"], registry=r)
        self.requests_finished = Counter("corral_requests", "Generation requests finished, by finish reason "
                                         "(stop, length, abort, error)", ["model", "finish_reason"], registry=r)
        self.prompt_tokens = Counter("corral_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.generation_tokens = Counter("corral_generation_tokens", "Tokens generated", ["model"], registry=r)
        self.engine_restarts = Counter("corral_engine_restarts", "Engine processes restarted after dying",
                                       ["model"], registry=r)
        self.time_to_first_token = Histogram("corral_time_to_first_token_seconds", "Time to the first token",
                                             ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram("corral_e2e_request_latency_seconds", "Request latency, arrival to last token",
                                     ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram("corral_time_per_output_token_seconds",
                                               "Mean time between output tokens of a request", ["model"],
                                               buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
                                               registry=r)

    def watch(self, models):
        """Export the engine gauges of `models` (an iterable of EngineClients), read at scrape time."""
        self.registry.register(EngineCollector(models))

    def observe_finished(self, model: str, finish_reason: str, prompt_tokens: int, generation_tokens: int,
                         ttft: float | None, latency: float):
        self.requests_finished.labels(model, finish_reason).inc()
        self.prompt_tokens.labels(model).inc(prompt_tokens)
        self.generation_tokens.labels(model).inc(generation_tokens)
        if ttft is not None:
            self.time_to_first_token.labels(model).observe(ttft)
            if generation_tokens > 1:
                self.time_per_output_token.labels(model).observe((latency - ttft) / (generation_tokens - 1))
        self.e2e_latency.labels(model).observe(latency)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class EngineCollector:
    """Gauges read from every model's latest engine stats at scrape time."""

    def __init__(self, models):
        self.models = models

    def collect(self):
        running = GaugeMetricFamily("corral_num_requests_running", "Sequences in the engine's running batch",
                                    labels=["model"])
        waiting = GaugeMetricFamily("corral_num_requests_waiting", "Sequences queued in the engine",
                                    labels=["model"])
        pending = GaugeMetricFamily("corral_num_requests_pending",
                                    "Requests admitted by the API and not finished (the bounded queue's depth)",
                                    labels=["model"])
        kv_usage = GaugeMetricFamily("corral_kv_cache_usage_ratio", "Fraction of KV cache blocks in use",
                                     labels=["model"])
        kv_blocks = GaugeMetricFamily("corral_kv_cache_blocks", "KV cache blocks of the engine", labels=["model"])
        state = GaugeMetricFamily("corral_model_state", "1 for the model's current state", labels=["model", "state"])
        for client in list(self.models):
            stats = client.stats or SchedulerStats()
            running.add_metric([client.name], stats.num_running)
            waiting.add_metric([client.name], stats.num_waiting)
            pending.add_metric([client.name], client.num_pending)
            kv_usage.add_metric([client.name], stats.kv_cache_usage)
            kv_blocks.add_metric([client.name], stats.num_kv_blocks)
            for s in ModelState:
                state.add_metric([client.name, s.value], 1.0 if client.state == s else 0.0)
        yield from (running, waiting, pending, kv_usage, kv_blocks, state)

    def describe(self):
        return []
