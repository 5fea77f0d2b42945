"""corral on Ray Serve: `build_app(config_path)` for `serve run corral.integrations.ray:build_app
config=serve.toml`, `app_from_config(ServerConfig)`, and `serve_on_ray` behind `corral serve --ray`.
Needs Ray Serve: pip install 'corral[ray]'."""
try:
    import ray.serve  # noqa: F401
except ImportError as e:
    raise ImportError(f"corral.integrations.ray needs Ray Serve: pip install 'corral[ray]' ({e})") from e

from corral.integrations.ray.app import app_from_config, build_app, serve_on_ray

__all__ = ["app_from_config", "build_app", "serve_on_ray"]
