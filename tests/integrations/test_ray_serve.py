"""corral on Ray Serve: a local Ray cluster of two nodes started here, corral's serve config with two tiny
models (tiny-qwen3 with two replicas), the openai client against Serve's HTTP proxy. Answers equal the
offline engine's, requests spread over both replicas, and a replica killed with ray.kill is replaced
while requests keep succeeding."""
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'corral[ray]')")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is not installed (pip install 'corral[ray]')")

from corral.integrations.ray import build_app  # noqa: E402
from corral.integrations.ray.app import model_deployment_options  # noqa: E402
from corral.server.config import build_config  # noqa: E402
from tests.server.helpers import API_KEY, free_port  # noqa: E402
from tests.tiny_models import build_model  # noqa: E402

APP = "corral"
REPLICATED = "tiny-qwen3"
PROMPT = "The capital of France is"
MAX_MODEL_LEN = 4096  # long enough that a stream left early could run on for seconds


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-models")
    return {"tiny-qwen3": build_model("qwen3", root / "qwen3", max_position_embeddings=MAX_MODEL_LEN),
            "tiny-llama": build_model("llama", root / "llama", max_position_embeddings=MAX_MODEL_LEN)}


@pytest.fixture(scope="module")
def config_file(model_dirs):
    path = model_dirs["tiny-qwen3"].parent / "serve.toml"
    path.write_text(f"""
[server]
api_key = "{API_KEY}"

[defaults]
device = "cpu"
max_model_len = {MAX_MODEL_LEN}
kv_cache_memory_bytes = "16MiB"

[models.tiny-qwen3]
model = "{model_dirs['tiny-qwen3']}"
num_replicas = 2

[models.tiny-llama]
model = "{model_dirs['tiny-llama']}"
""")
    return path


@pytest.fixture(scope="module")
def ray_url(config_file):
    from ray.cluster_utils import Cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3, "include_dashboard": False})
    cluster.add_node(num_cpus=3)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        port = free_port()
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"config": str(config_file)}), name=APP, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def client(ray_url):
    import openai
    return openai.OpenAI(base_url=f"{ray_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def complete(client, model: str = REPLICATED) -> str:
    return client.completions.create(model=model, prompt=PROMPT, max_tokens=8, temperature=0).choices[0].text


def replica_stats(model: str, expected: int, tries: int = 100) -> dict:
    """Each replica's ReplicaStats, by replica id, read through the deployment's handle (which picks a
    replica per call) until `expected` replicas have answered."""
    handle = serve.get_deployment_handle(f"model-{model}", app_name=APP)
    seen = {}
    for _ in range(tries):
        stats = handle.stats.remote().result(timeout_s=30)
        seen[stats.replica] = stats
        if len(seen) == expected:
            break
    return seen


def replica_actors(model: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and f"#model-{model}#" in a["name"]]


def test_greedy_answers_equal_the_offline_engine_s(client, model_dirs):
    from corral import LLM, SamplingParams
    for model in ("tiny-qwen3", "tiny-llama"):
        reference = LLM(str(model_dirs[model]), max_model_len=MAX_MODEL_LEN, kv_cache_memory_bytes=16 << 20,
                        device="cpu").generate(PROMPT, SamplingParams(temperature=0, max_tokens=8))[0]
        assert complete(client, model) == reference.outputs[0].text


def test_every_request_is_answered_and_spread_over_both_replicas(client):
    before = sum(s.num_requests for s in replica_stats(REPLICATED, expected=2).values())
    messages = [{"role": "user", "content": f"Question {i}"} for i in range(16)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda m: client.chat.completions.create(
            model=REPLICATED, messages=[m], max_tokens=4), messages))
    assert all(a.choices[0].finish_reason in ("stop", "length") and a.usage.completion_tokens for a in answers)
    stats = replica_stats(REPLICATED, expected=2)
    assert len(stats) == 2
    assert all(s.num_requests > 0 for s in stats.values()), stats
    assert sum(s.num_requests for s in stats.values()) - before == len(messages)


def test_a_killed_replica_is_replaced_while_requests_keep_succeeding(client):
    expected = complete(client)
    first, *_ = actors = replica_actors(REPLICATED)
    assert len(actors) == 2
    ray.kill(ray.get_actor(first, namespace="serve"), no_restart=True)
    deadline = time.monotonic() + 120
    replaced = False
    while time.monotonic() < deadline:
        assert complete(client) == expected
        assert client.chat.completions.create(model="tiny-llama", messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=2).choices[0].message.content is not None
        now = replica_actors(REPLICATED)
        if len(now) == 2 and first not in now and len(replica_stats(REPLICATED, expected=2)) == 2:
            replaced = True
            break
        time.sleep(0.5)
    assert replaced, "Ray did not replace the killed replica within 120 s"
    assert complete(client) == expected


def test_a_stream_left_early_is_aborted_in_its_replica(ray_url):
    import httpx
    body = {"model": REPLICATED, "prompt": PROMPT, "max_tokens": MAX_MODEL_LEN - 16, "stream": True,
            "ignore_eos": True}
    with httpx.stream("POST", f"{ray_url}/v1/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"}) as response:
        lines = response.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        running = replica_stats(REPLICATED, expected=2)
        assert sum(s.scheduler.num_running for s in running.values()) == 1
    deadline = time.monotonic() + 3  # the rest of the stream would take some 10 s
    while sum(s.scheduler.num_running for s in replica_stats(REPLICATED, expected=2).values()):
        assert time.monotonic() < deadline, "the replica still generates for a stream nobody reads"
        time.sleep(0.1)
    metrics = httpx.get(f"{ray_url}/metrics").text
    assert f'corral_requests_total{{finish_reason="abort",model="{REPLICATED}"}} 1.0' in metrics


def test_errors_and_metrics_are_corral_s_own(client, ray_url):
    import httpx
    import openai
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.body["param"] == "model" and "tiny-qwen3" in e.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="wrong").models.list()
    assert {m.id for m in client.models.list()} == {"tiny-qwen3", "tiny-llama"}
    metrics = httpx.get(f"{ray_url}/metrics").text
    assert 'corral_http_requests_total{endpoint="/v1/chat/completions",model="tiny-qwen3",status="200"}' in metrics


def test_replicas_take_their_resources_and_bounds_from_the_config(tmp_path):
    config = build_config(file=None, models=["a", "b", "c"], served_names=["a", "b", "c"], model_defaults={})
    a, b, c = config.models
    a.device, b.device, b.tensor_parallel_size = "cpu", "cuda", 2
    c.device, c.gpu_memory_utilization, c.min_replicas, c.max_replicas = "cuda", 0.45, 0, 4
    options = {spec.name: model_deployment_options(spec) for spec in (a, b, c)}
    assert options["a"]["ray_actor_options"]["num_gpus"] == 0 and options["a"]["num_replicas"] == 1
    assert options["b"]["ray_actor_options"]["num_gpus"] == 2
    assert options["c"]["ray_actor_options"]["num_gpus"] == 0.45
    autoscaling = options["c"]["autoscaling_config"]
    assert (autoscaling["min_replicas"], autoscaling["max_replicas"]) == (0, 4)
    assert autoscaling["target_ongoing_requests"] == c.max_num_seqs
    assert options["c"]["max_ongoing_requests"] == c.max_num_seqs + c.max_queue_len
