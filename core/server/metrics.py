"""Prometheus metrics, each labelled by model, in a CollectorRegistry of the app's own (no globals)."""
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from corral.engine.messages import SchedulerStats
from corral.server.model_state import ModelState

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


# The gauges of each engine's latest SchedulerStats: the stats field, corral's name, and the name of the
# Gateway API Inference Extension's model-server protocol (vLLM's, labelled model_name) where it has one,
# so that llm-d, KServe and other inference gateways read corral's pods as they read vLLM's.
ENGINE_GAUGES = (
    ("num_running", "corral_num_requests_running", "vllm:num_requests_running",
     "Sequences in the engine's running batch"),
    ("num_waiting", "corral_num_requests_waiting", "vllm:num_requests_waiting", "Sequences queued in the engine"),
    ("kv_cache_usage", "corral_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc",
     "Fraction of KV cache blocks in use (0..1)"),
    ("num_kv_blocks", "corral_kv_cache_blocks", None, "KV cache blocks of the engine"),
)


class EngineCollector:
    """Gauges read from every model's latest engine stats at scrape time."""

    def __init__(self, models):
        self.models = models

    def collect(self):
        gauges = [(field, GaugeMetricFamily(name, help, labels=["model"]),
                   GaugeMetricFamily(gateway, help, labels=["model_name"]) if gateway else None)
                  for field, name, gateway, help in ENGINE_GAUGES]
        pending = GaugeMetricFamily("corral_num_requests_pending",
                                    "Requests admitted by the API and not finished (the bounded queue's depth)",
                                    labels=["model"])
        state = GaugeMetricFamily("corral_model_state", "1 for the model's current state", labels=["model", "state"])
        for client in list(self.models):
            stats = client.stats or SchedulerStats()
            for field, own, gateway in gauges:
                own.add_metric([client.name], getattr(stats, field))
                if gateway is not None:
                    gateway.add_metric([client.name], getattr(stats, field))
            pending.add_metric([client.name], client.num_pending)
            for s in ModelState:
                state.add_metric([client.name, s.value], 1.0 if client.state == s else 0.0)
        for _, own, gateway in gauges:
            yield own
            if gateway is not None:
                yield gateway
        yield from (pending, state)

    def describe(self):
        return []
