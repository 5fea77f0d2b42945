"""The Kubernetes manifests (docker/k8s/), checked without a cluster: each against the Kubernetes schemas
(kubernetes-validate's bundled ones, strict, so an unknown or misspelt field fails), and what they hand
to corral read back through corral's own code: the serve config, the port, the routes the probes and
the monitor use, the store, the variables, and the metric names the autoscaler reads."""
import re
import types
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from corral.cli import build_parser
from corral.server.config import ServerConfig, build_config
from tests.server.test_docker import DOCKERFILE, dockerfile_env, instructions

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "docker" / "k8s"
ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
KUBERNETES_VERSIONS = ("1.29", "1.33")
PORT = ServerConfig(models=[]).port
CRD_KINDS = {"ServiceMonitor"}  # validated below against the fields of the Prometheus Operator's CRD used here


def manifests() -> dict[str, dict]:
    """kind -> the one object of that kind, over every manifest file (Kustomization aside)."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc["kind"] != "Kustomization":
                assert doc["kind"] not in found, f"two {doc['kind']}s: one group's manifests hold one of each"
                found[doc["kind"]] = doc | {"_file": path.name}
    return found


def without_file(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "_file"}


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    return manifests()


@pytest.fixture(scope="module")
def container(k8s) -> dict:
    (only,) = k8s["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


@pytest.fixture(scope="module")
def routes() -> set[str]:
    from corral.server.api import create_app
    return {route.path for route in create_app(build_config(["unused"])).routes}


def served_metric_names() -> set[str]:
    """The metric names corral's /metrics exports for a model."""
    from corral.server.model_state import ModelState
    from corral.server.metrics import Metrics
    metrics = Metrics()
    metrics.watch([types.SimpleNamespace(name="m", stats=None, num_pending=0, state=ModelState.READY)])
    metrics.http_requests.labels("m", "/v1/completions", "200").inc()
    return {family.name for family in text_string_to_metric_families(metrics.render().decode())}


# schemas

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(k8s, version):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert set(k8s) - CRD_KINDS == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
                                    "HorizontalPodAutoscaler"}
    for kind, doc in k8s.items():
        if kind not in CRD_KINDS:
            kubernetes_validate.validate(without_file(doc), version, strict=True)


def test_the_service_monitor_has_the_operator_s_shape(k8s):
    """The monitoring.coreos.com/v1 ServiceMonitor fields used here, as the Prometheus Operator's CRD
    declares them, with Kubernetes' own LabelSelector and ObjectMeta (strict: a misspelt field fails)."""
    import jsonschema
    pytest.importorskip("kubernetes_validate")
    from kubernetes_validate.utils import latest_version, schema_contents
    from referencing import Registry, Resource
    version = latest_version()
    definitions = schema_contents(f"kubernetes-json-schema/v{version}-local-strict/_definitions.json", version)
    meta = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1."
    endpoint = {"type": "object", "additionalProperties": False, "properties": {
        "port": {"type": "string"}, "targetPort": {"type": ["string", "integer"]}, "path": {"type": "string"},
        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
        "interval": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?"
                                                  r"(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "scrapeTimeout": {"type": "string"}, "honorLabels": {"type": "boolean"}}}
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema",
              "$id": "https://kubernetes.io/api/servicemonitor-monitoring-v1.json",
              "type": "object", "additionalProperties": False, "required": ["apiVersion", "kind", "spec"],
              "properties": {
                  "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
                  "metadata": {"$ref": meta + "ObjectMeta"},
                  "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                           "properties": {
                               "selector": {"$ref": meta + "LabelSelector"},
                               "endpoints": {"type": "array", "minItems": 1, "items": endpoint},
                               "jobLabel": {"type": "string"},
                               "namespaceSelector": {"type": "object"}}}}}
    registry = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(without_file(k8s["ServiceMonitor"]))


def test_the_kustomization_applies_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml")
                                                        if p.name != "kustomization.yaml")


# what the pods run

def test_the_config_map_holds_a_serve_config_corral_reads(k8s, container, tmp_path):
    from corral.registry.manifests import ManifestRegistry
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    volume = next(v for v in k8s["Deployment"]["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    args = build_parser().parse_args(["serve", *container["args"]])
    key = Path(args.config).relative_to(mount["mountPath"]).as_posix()
    config_file = tmp_path / key
    config_file.write_text(k8s["ConfigMap"]["data"][key])
    config = build_config(file=config_file)
    assert len(config.models) >= 1
    known = ManifestRegistry.load()
    assert all(spec.model in known for spec in config.models), "every model is a manifest name corral knows"
    assert config.port == PORT, "the pods listen on corral's default port"


def test_the_pods_serve_on_corral_s_port_with_probes_on_its_health_route(k8s, container, routes):
    (port,) = container["ports"]
    assert port["containerPort"] == PORT and ("EXPOSE", str(PORT)) in instructions(DOCKERFILE)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        check = container[probe]["httpGet"]
        assert check["path"] == "/health" and check["path"] in routes
        assert check["port"] in (port["name"], port["containerPort"])
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60, "a first download may take 30 min"
    service = k8s["Service"]["spec"]
    assert service["ports"][0]["targetPort"] in (port["name"], port["containerPort"])
    pod_labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()
    assert k8s["Deployment"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_the_pods_keep_the_image_s_store_user_and_gpu(k8s, container, monkeypatch):
    from corral.store import default_models_dir
    monkeypatch.setenv("CORRAL_HOME", dockerfile_env()["CORRAL_HOME"])
    store = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert Path(store["mountPath"]) == default_models_dir()
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    claim = next(v for v in pod["volumes"] if v["name"] == "models")["persistentVolumeClaim"]["claimName"]
    assert claim == k8s["PersistentVolumeClaim"]["metadata"]["name"]
    uid = re.search(r"UID=(\d+)", " ".join(rest for op, rest in instructions(DOCKERFILE) if op == "ARG"))[1]
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["fsGroup"] == int(uid)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])


def test_every_variable_the_pods_set_is_one_corral_reads_with_the_mirrors_among_them(container, monkeypatch,
                                                                                      tmp_path):
    from corral.plugins.huggingface import HuggingFaceSource
    from corral.plugins.modelscope import ModelScopeSource
    from corral.registry.sources import normalize_source
    from corral.store import ModelStore
    sources = "\n".join(p.read_text() for d in ("core", "registry", "plugins") for p in (REPO / d).rglob("*.py"))
    names = [e["name"] for e in container["env"]]
    unread = [name for name in names if f'"{name}"' not in sources]
    assert not unread, f"the pods set {unread}, which corral never reads"
    assert {"CORRAL_SOURCE", "HF_ENDPOINT", "MODELSCOPE_ENDPOINT"} <= set(names)
    values = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    assert normalize_source(None) == values["CORRAL_SOURCE"]
    store = ModelStore(tmp_path)
    assert HuggingFaceSource(store).endpoint() == values["HF_ENDPOINT"]
    assert ModelScopeSource(store).endpoint() == values["MODELSCOPE_ENDPOINT"]
    secrets = [e for e in container["env"] if "valueFrom" in e]
    assert all(e["valueFrom"]["secretKeyRef"]["optional"] for e in secrets), "a missing Secret must not stop a pod"


# metrics and autoscaling

def test_the_monitor_scrapes_corral_s_metrics_route_through_the_service(k8s, routes):
    (endpoint,) = k8s["ServiceMonitor"]["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["path"] in routes
    assert endpoint["port"] in {p["name"] for p in k8s["Service"]["spec"]["ports"]}
    assert k8s["ServiceMonitor"]["spec"]["selector"]["matchLabels"].items() <= \
        k8s["Service"]["metadata"]["labels"].items()


def test_the_autoscaler_reads_a_queue_depth_metric_corral_serves(k8s):
    served = served_metric_names()
    assert {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"} <= served
    (metric,) = k8s["HorizontalPodAutoscaler"]["spec"]["metrics"]
    assert metric["type"] == "Pods"
    hpa_name = metric["pods"]["metric"]["name"]
    target = k8s["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", k8s["Deployment"]["metadata"]["name"])
    (rule,) = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert rule["name"]["as"] == hpa_name
    series = re.match(r"[\w:]+", rule["seriesQuery"])[0]
    assert series in served and "waiting" in series
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
