"""corral as a Ray Serve application: a deployment per model, each replica one corral engine, behind an
ingress deployment that runs corral's own app (every route, error shape and metric of `corral serve`),
routing by `model` to the model deployments through their handles.

    proxy -> ingress (create_app, RayEngineClient per model) -> model-NAME replicas (ModelReplica)
"""
import dataclasses
import logging
import os
import signal
import threading
from pathlib import Path

from ray import serve
from ray.serve import Application

from corral.config import ConfigError
from corral.integrations.ray.client import RayEngineClient, deployment_name
from corral.integrations.ray.replica import ModelReplica, replica_cpus
from corral.server.config import DEFAULT_GPU_MEMORY_UTILIZATION, ModelSpec, ServerConfig, build_config

logger = logging.getLogger(__name__)

INGRESS = "ingress"


def build_app(config_path: str | Path | dict) -> Application:
    """The application of corral's serve config file (its [server], [defaults] and [models.NAME] tables,
    with the environment's variables as `corral serve` reads them). `serve run
    corral.integrations.ray:build_app config=serve.toml` passes {"config": "serve.toml"}."""
    if isinstance(config_path, dict):
        if set(config_path) != {"config"}:
            raise ConfigError(f"build_app takes one argument, config=FILE (corral's serve config); got "
                              f"{', '.join(sorted(config_path)) or 'none'}")
        config_path = config_path["config"]
    return app_from_config(build_config(file=config_path, env=os.environ))


def app_from_config(config: ServerConfig) -> Application:
    names = [deployment_name(spec.name) for spec in config.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"two models get one Ray Serve deployment name: {', '.join(names)}; rename one")
    models = [serve.deployment(ModelReplica).options(**model_deployment_options(spec)).bind(spec)
              for spec in config.models]
    ingress_config = dataclasses.replace(config, models=[ingress_spec(spec) for spec in config.models])
    ingress = serve.ingress(CorralApp(ingress_config))(Ingress)
    return serve.deployment(ingress, name=INGRESS, max_ongoing_requests=config.limit_concurrency,
                            graceful_shutdown_timeout_s=config.shutdown_timeout).bind(*models)


def model_deployment_options(spec: ModelSpec) -> dict:
    """A model's replicas: each one engine, with the model's CPU threads and GPU share (its
    gpu_memory_utilization, or tensor_parallel_size GPUs); a fixed num_replicas, or autoscaling between
    min_replicas and max_replicas on queue depth (requests past a full batch per replica)."""
    options = {"name": deployment_name(spec.name), "max_ongoing_requests": spec.max_pending,
               "ray_actor_options": {"num_cpus": replica_cpus(spec), "num_gpus": num_gpus(spec)},
               "health_check_period_s": 10, "graceful_shutdown_timeout_s": 30}
    if spec.max_replicas is None:
        options["num_replicas"] = spec.num_replicas
    else:
        low = 1 if spec.min_replicas is None else spec.min_replicas
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": spec.max_replicas,
                                         "initial_replicas": max(low, 1), "target_ongoing_requests": spec.max_num_seqs}
    if spec.devices is not None:
        logger.warning("%s: devices %s are ignored on Ray Serve, which places replicas on GPUs itself", spec.name,
                       spec.devices)
    return options


def num_gpus(spec: ModelSpec) -> float:
    if spec.device is not None and not spec.device.startswith("cuda"):
        return 0
    if spec.tensor_parallel_size > 1:
        return spec.tensor_parallel_size
    return spec.gpu_memory_utilization or DEFAULT_GPU_MEMORY_UTILIZATION


def ingress_spec(spec: ModelSpec) -> ModelSpec:
    """The ingress's view of a model: its deployment as a whole, whose queue bound (max_num_seqs +
    max_queue_len) is every replica's."""
    replicas = spec.max_replicas or spec.num_replicas
    return dataclasses.replace(spec, max_num_seqs=spec.max_num_seqs * replicas,
                               max_queue_len=spec.max_queue_len * replicas)


class CorralApp:
    """corral's app as an ASGI app that Ray Serve ships to the ingress replica as its config alone: it is
    built there, on the first ASGI event (lifespan startup), with a RayEngineClient per model."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.app = None

    async def __call__(self, scope, receive, send):
        if self.app is None:
            from corral.server.api import create_app
            self.app = create_app(self.config, engine_client=RayEngineClient)
        await self.app(scope, receive, send)


class Ingress:
    """The HTTP entry. The model deployments are bound to it so that they belong to its application; its
    engine clients reach them by name."""

    def __init__(self, *model_deployments):
        """`model_deployments`: their handles, which the engine clients look up by name."""


def serve_on_ray(config: ServerConfig, address: str | None, name: str = "corral") -> None:
    """`corral serve --ray [ADDRESS]`: run the application on a Ray cluster (ADDRESS, else RAY_ADDRESS or
    the cluster `ray start` began on this machine, else a Ray instance of this process's own), with
    Serve's HTTP proxy on the config's host and port, until SIGINT or SIGTERM; then delete it."""
    import ray
    ray.init(address=address)
    serve.start(http_options={"host": config.host, "port": config.port})
    serve.run(app_from_config(config), name=name, route_prefix="/")
    logger.info("serving %s on Ray Serve at http://%s:%d", ", ".join(s.name for s in config.models), config.host,
                config.port)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("deleting the Ray Serve application %s", name)
        serve.delete(name)
