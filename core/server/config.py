"""What `corral serve` serves: flags, environment and a config file (TOML or YAML) say the same things.

Server settings: flag > environment > the file's [server] table > default. Model settings: a model's
own table > flag > environment > the file's [defaults] table > default.

    [server]
    port = 8000
    [models.qwen]                     # the table's name is the served name
    model = "qwen3-4b"                # any reference: manifest name, hf:Org/Name, ms:Org/Name, path
    aliases = ["gpt-4o-mini"]
    max_model_len = 8192
    gpu_memory_utilization = 0.45
    keep_alive = "10m"
    sampling = { temperature = 0.6, top_p = 0.95 }
"""
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from corral.config import ENGINE_ARGS, ConfigError, EngineArgs, setting
from corral.server.config_file import load_file
from corral.server.placement import parse_devices, place_models, sharing_groups

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_GPU_MEMORY_UTILIZATION = EngineArgs.__dataclass_fields__["gpu_memory_utilization"].default

ENV_SERVER = {"CORRAL_API_KEY": "api_key", "CORRAL_HOST": "host", "CORRAL_PORT": "port"}
ENV_MODEL = {"MAX_MODEL_LEN": "max_model_len", "GPU_MEMORY_UTILIZATION": "gpu_memory_utilization",
             "TENSOR_PARALLEL_SIZE": "tensor_parallel_size", "MAX_NUM_SEQS": "max_num_seqs",
             "MAX_NUM_BATCHED_TOKENS": "max_num_batched_tokens", "DTYPE": "dtype"}
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "seed", "min_tokens", "ignore_eos", "skip_special_tokens",
                 "include_stop_str_in_output", "max_tokens")
ALIASES = {"reference": "model", "served_model_name": "name", "default_sampling": "sampling",
           "memory_share": "gpu_memory_utilization"}


@dataclass(slots=True)
class ModelSpec(EngineArgs):
    """One served model: how to find it, what it is called, how the server treats it, and its
    engine's settings (EngineArgs, declared once in corral.config)."""

    model: str
    name: str = ""
    aliases: list[str] = field(default_factory=list)
    source: str | None = None
    gpu_memory_utilization: float | None = field(default=None, kw_only=True)  # None: an even split of the rest
    devices: list[int] | None = None     # this model's GPUs; None: placed (see corral.server.placement)
    num_threads: int | None = None
    max_queue_len: int = 256
    keep_alive: float | None = None      # seconds idle before unloading; None: never
    preload: bool = True
    reasoning_parser: str = "auto"        # auto (Qwen3 models), qwen3 or none
    tool_call_parser: str = "auto"        # auto (from the architecture and chat template) or a parser's name
    sampling: dict = field(default_factory=dict)
    startup_timeout: float = 900.0
    num_replicas: int = 1                # on Ray Serve (corral.integrations.ray): engines serving this model
    min_replicas: int | None = None      # on Ray Serve: autoscale on queue depth between these bounds
    max_replicas: int | None = None      # (max_replicas turns autoscaling on)

    def engine_args(self) -> dict:
        """Keyword arguments of EngineConfig, less `model` (the resolved directory)."""
        args = {name: getattr(self, name) for name in ENGINE_ARGS}
        if args["gpu_memory_utilization"] is None:
            args["gpu_memory_utilization"] = DEFAULT_GPU_MEMORY_UTILIZATION
        return args

    @property
    def max_pending(self) -> int:
        """Requests admitted at once: a full batch plus the queue."""
        return self.max_num_seqs + self.max_queue_len


MODEL_KEYS = {f.name for f in fields(ModelSpec)}


@dataclass(slots=True)
class ServerConfig:
    """The server's settings, declared once: `corral serve`'s flags and the file's [server] keys derive
    from these fields."""

    models: list[ModelSpec]
    host: str = setting("127.0.0.1", "address to bind (default 127.0.0.1, this machine only; 0.0.0.0 for every "
                                     "interface; env CORRAL_HOST)")
    port: int = setting(8000, "port (default 8000; env CORRAL_PORT)")
    api_key: str | None = setting(None, "require `Authorization: Bearer KEY` (env CORRAL_API_KEY)")
    api_key_file: str | None = setting(None, "a file of API keys, one per line (# comments); each caller's "
                                             "prefix-cache entries are kept apart by its key", metavar="FILE")
    prefix_cache_isolation: str = setting("key", "key (default): callers with different API keys never share "
                                                 "cached prompt blocks; none: every caller of a model shares them",
                                          choices=("key", "none"))
    trust_request_chat_template: bool = setting(False, "render chat templates that requests bring "
                                                       "(chat_template_kwargs.chat_template); refused by default")
    max_request_bytes: int = setting(4 << 20, "largest request body, e.g. 4MiB (default); larger ones get 413",
                                     flag="--max-request-size")
    enable_docs: bool = setting(False, "serve /docs, /redoc and /openapi.json (behind the API key when there is one)")
    max_stored_responses: int = setting(1000, "Responses API responses kept in memory for previous_response_id and "
                                              "GET /v1/responses/{id}, least recently used dropped first; 0 keeps "
                                              "none (default 1000)")
    timeout_keep_alive: float = setting(5.0, "seconds an idle keep-alive connection stays open (default 5)")
    header_timeout: float = setting(10.0, "seconds a client gets to send a request's headers (default 10)")
    limit_concurrency: int = setting(1024, "connections served at once; more get 503 (default 1024)")
    shutdown_timeout: float = setting(30.0, "seconds in-flight requests get to finish after SIGTERM (default 30)")
    request_load_timeout: float = setting(600.0)   # how long a request waits for its model to finish loading
    memory_budget_bytes: int | None = setting(None, "device memory for all models together, e.g. 6GiB: models load "
                                                    "on demand and the least recently used idle ones sleep or "
                                                    "unload to make room (on CUDA the default is "
                                                    "--gpu-memory-utilization of the device once "
                                                    "--max-loaded-models is given)", flag="--memory-budget")
    max_loaded_models: int | None = setting(None, "models awake at once; more load on demand, evicting the least "
                                                  "recently used idle one (default: as many as the budget holds)")
    eviction: str = setting("sleep", "what makes room for a model: sleep (default: idle models' weights go to host "
                                     "memory, their engines stay and wake fast; unloaded when that is not enough) "
                                     "or unload", choices=("sleep", "unload"))
    sleep_memory_bytes: int | None = setting(None, "host memory for the weights of sleeping models together, e.g. "
                                                   "48GiB: past it the least recently used sleeping models are "
                                                   "unloaded (default: half of the machine's memory)",
                                             flag="--sleep-memory")
    kv_sharing: str = setting("static", "how models under one memory budget get KV memory: static (default: each "
                                        "keeps the minimum counted for it) or elastic (a busy model borrows the "
                                        "KV pages idle ones do not use, and gives them back under pressure)",
                              choices=("static", "elastic"))


SERVER_KEYS = {f.name for f in fields(ServerConfig)} - {"models"}


def build_config(models: list[str] | None = None, file: str | Path | None = None, server: dict | None = None,
                 model_defaults: dict | None = None, served_names: list[str] | None = None,
                 env: Mapping[str, str] | None = None) -> ServerConfig:
    """`server` and `model_defaults` hold the flags that were given (None values are ignored)."""
    env = env if env is not None else {}
    data = load_file(file) if file else {}
    server_values = _checked(data.get("server"), SERVER_KEYS, "[server]")
    server_values.update({key: env[var] for var, key in ENV_SERVER.items() if env.get(var)})
    server_values.update({k: v for k, v in (server or {}).items() if v is not None})

    defaults = _checked(data.get("defaults"), MODEL_KEYS - {"model", "name", "aliases"}, "[defaults]")
    defaults.update({key: env[var] for var, key in ENV_MODEL.items() if env.get(var)})
    defaults.update({k: v for k, v in (model_defaults or {}).items() if v is not None})

    sections = _model_sections(data.get("models"))
    if models:
        sections += [{"model": m} for m in models]
    if not sections and env.get("MODEL_NAME"):
        sections = [{"model": m.strip()} for m in env["MODEL_NAME"].split(",") if m.strip()]
    if not sections:
        sections = [{"model": DEFAULT_MODEL}]
    _apply_served_names(sections, served_names or (env["SERVED_MODEL_NAME"].split(",")
                                                   if env.get("SERVED_MODEL_NAME") else None))
    total_memory = _coerce(ModelSpec, "gpu_memory_utilization",
                           defaults.pop("gpu_memory_utilization", DEFAULT_GPU_MEMORY_UTILIZATION))
    specs = [_model_spec({**defaults, **section}) for section in sections]
    place_models(specs)
    for group in sharing_groups(specs):
        _split_memory(group, total_memory)
    _check_names(specs)
    config = ServerConfig(models=specs, **{k: _coerce(ServerConfig, k, v) for k, v in server_values.items()})
    if config.api_key_file:
        from corral.server.auth import read_key_file
        read_key_file(config.api_key_file)  # a missing or empty file fails now, in one line
    if config.prefix_cache_isolation not in ("key", "none"):
        raise ConfigError(f"prefix_cache_isolation must be key or none, got {config.prefix_cache_isolation!r}")
    if config.memory_budget_bytes is not None and config.memory_budget_bytes <= 0:
        raise ConfigError(f"memory_budget must be a positive size such as 6GiB, got {config.memory_budget_bytes}")
    if config.sleep_memory_bytes is not None and config.sleep_memory_bytes < 0:
        raise ConfigError(f"sleep_memory must be a size such as 48GiB, got {config.sleep_memory_bytes}")
    if config.eviction not in ("sleep", "unload"):
        raise ConfigError(f"eviction must be sleep or unload, got {config.eviction!r}")
    if config.kv_sharing not in ("static", "elastic"):
        raise ConfigError(f"kv_sharing must be static or elastic, got {config.kv_sharing!r}")
    if config.max_loaded_models is not None and config.max_loaded_models < 1:
        raise ConfigError(f"max_loaded_models must be >= 1, got {config.max_loaded_models}")
    if config.max_stored_responses < 0:
        raise ConfigError(f"max_stored_responses must be >= 0, got {config.max_stored_responses}")
    for key in ("timeout_keep_alive", "header_timeout", "shutdown_timeout", "request_load_timeout"):
        if not (math.isfinite(seconds := getattr(config, key)) and seconds >= 0):
            raise ConfigError(f"{key} must be a number of seconds >= 0, got {seconds}")
    if config.limit_concurrency < 1:
        raise ConfigError(f"limit_concurrency must be >= 1, got {config.limit_concurrency}")
    if not 0 < config.port < 65536 and config.port != 0:
        raise ConfigError(f"port must be in [1, 65535], got {config.port}")
    return config


def _model_sections(raw) -> list[dict]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        items = []
        for name, section in raw.items():
            if not isinstance(section, dict):
                raise ConfigError(f"[models.{name}] must be a table")
            items.append({"name": name, **section})
    elif isinstance(raw, list):
        items = [dict(s) for s in raw if isinstance(s, dict)]
        if len(items) != len(raw):
            raise ConfigError("every entry of models must be a table")
    else:
        raise ConfigError("models must be a table of tables or a list of tables")
    sections = []
    for section in items:
        section = {ALIASES.get(k, k): v for k, v in section.items()}
        label = f"[models.{section.get('name') or section.get('model')}]"
        section = _checked(section, MODEL_KEYS, label)
        if not section.get("model"):
            raise ConfigError(f"{label} needs `model`, the reference to serve")
        sections.append(section)
    return sections


def _apply_served_names(sections: list[dict], names: list[str] | None):
    if not names:
        return
    if len(sections) == 1:
        sections[0]["name"], sections[0]["aliases"] = names[0], list(names[1:]) + sections[0].get("aliases", [])
    elif len(names) == len(sections):
        for section, name in zip(sections, names):
            section["name"] = name
    else:
        raise ConfigError(f"--served-model-name gave {len(names)} names for {len(sections)} models; "
                          "give one per model, in order (or name them in a config file)")


def _model_spec(values: dict) -> ModelSpec:
    values = {k: _coerce(ModelSpec, k, v) for k, v in values.items()}
    spec = ModelSpec(**values)
    if not spec.name:
        spec.name = default_served_name(spec.model)
        if spec.name != spec.model:
            spec.aliases.append(spec.model)
    if spec.reasoning_parser not in ("auto", "qwen3", "none"):
        raise ConfigError(f"{spec.name}: reasoning_parser must be auto, qwen3 or none, got {spec.reasoning_parser!r}")
    if spec.tool_call_parser != "auto":
        from corral.registry.plugins import PluginManager
        names = PluginManager().tool_parsers().names()
        if spec.tool_call_parser not in names:
            raise ConfigError(f"{spec.name}: tool_call_parser must be auto or one of {', '.join(names)}, "
                              f"got {spec.tool_call_parser!r}")
    try:
        spec.check()
    except ConfigError as e:
        raise ConfigError(f"{spec.name}: {e}") from None
    unknown = set(spec.sampling) - set(SAMPLING_KEYS)
    if unknown:
        raise ConfigError(f"{spec.name}: unknown sampling default(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(SAMPLING_KEYS)}")
    if spec.max_queue_len < 0:
        raise ConfigError(f"{spec.name}: max_queue_len must be >= 0, got {spec.max_queue_len}")
    if spec.num_replicas < 1:
        raise ConfigError(f"{spec.name}: num_replicas must be >= 1, got {spec.num_replicas}")
    if spec.max_replicas is None and spec.min_replicas is not None:
        raise ConfigError(f"{spec.name}: min_replicas needs max_replicas (autoscaling between the two)")
    if spec.max_replicas is not None and not 0 <= (spec.min_replicas or 0) <= spec.max_replicas >= 1:
        raise ConfigError(f"{spec.name}: autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas "
                          f">= 1, got {spec.min_replicas} and {spec.max_replicas}")
    return spec


def default_served_name(reference: str) -> str:
    """qwen3-4b and Qwen/Qwen3-4B as they are; hf:Qwen/Qwen3-4B@main -> Qwen/Qwen3-4B; a local
    directory (/models/my-llama/) -> my-llama."""
    scheme, sep, rest = reference.partition(":")
    if sep and scheme in ("hf", "ms", "modelscope", "huggingface") and rest:
        return rest.split("@")[0]
    if reference.startswith(("/", ".", "~")) or Path(reference).is_dir():
        return Path(reference).name or reference
    return reference


def _split_memory(specs: list[ModelSpec], total: float):
    """The global gpu_memory_utilization is the total; models without their own share split what the
    others leave, evenly."""
    if not 0 < total <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {total}")
    explicit = [s for s in specs if s.gpu_memory_utilization is not None]
    rest = [s for s in specs if s.gpu_memory_utilization is None]
    left = total - sum(s.gpu_memory_utilization for s in explicit)
    if len(specs) > 1 and sum(s.gpu_memory_utilization for s in explicit) > 1:
        raise ConfigError("the models' gpu_memory_utilization shares add up to more than 1")
    if rest and left <= 0:
        raise ConfigError(f"the models' own gpu_memory_utilization shares use all of the total {total}; "
                          "none is left for the others")
    for s in rest:
        s.gpu_memory_utilization = left / len(rest)


def _check_names(specs: list[ModelSpec]):
    seen: dict[str, str] = {}
    for spec in specs:
        for name in [spec.name, *spec.aliases]:
            if name in seen and seen[name] != spec.name:
                raise ConfigError(f"the name {name!r} is used by both {seen[name]} and {spec.name}")
            seen[name] = spec.name
    spec_names = [s.name for s in specs]
    if len(set(spec_names)) != len(spec_names):
        raise ConfigError(f"two models are served under one name: {spec_names}")


def _checked(values, allowed: set[str], label: str) -> dict:
    values = {} if values is None else values  # `[server]` with nothing in it, in YAML
    if not isinstance(values, dict):
        raise ConfigError(f"{label} must be a table of settings, got {values!r}")
    values = {ALIASES.get(k, k).replace("-", "_"): v for k, v in values.items()}
    unknown = set(values) - allowed
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}; "
                          f"allowed: {', '.join(sorted(allowed))}")
    return values


def _coerce(cls, key: str, value):
    """Strings from the environment or a file into the field's type, with an error naming the key."""
    if key == "devices":
        return parse_devices(value)
    if key == "keep_alive":
        return parse_duration(value)
    if key.endswith("_bytes"):
        return parse_size(value, key)
    kind = {f.name: f.type for f in fields(cls)}[key]
    kind = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        if value is None:
            return None
        if "list" in kind:
            return [str(v) for v in value] if isinstance(value, list) else [s.strip() for s in str(value).split(",")]
        if "dict" in kind:
            if not isinstance(value, dict):
                raise ValueError("expected a table")
            return dict(value)
        if kind.startswith("bool"):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("expected an integer")
            return int(value)
        if kind.startswith("float"):
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{key}: invalid value {value!r} ({e})") from None


def parse_duration(value) -> float | None:
    """Ollama's keep_alive: "5m", "1h30m", "45s", seconds as a number; negative means never unload."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return None if value < 0 else float(value)
    text = str(value).strip().lower()
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return parse_duration(float(text))
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ConfigError(f"keep_alive: cannot read {value!r}; use seconds or a duration such as 30s, 5m, 1h")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(a) * scale[b] for a, b in parts)


def parse_size(value, key: str = "kv_cache_memory_bytes") -> int | None:
    """Bytes as a number or with a unit: 512MiB, 2GiB, 1.5GB."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*", str(value).lower())
    if not match:
        raise ConfigError(f"{key}: cannot read {value!r}; use bytes or a size such as 512MiB")
    number, unit = float(match[1]), (match[2] or "b").rstrip("b") or "b"
    powers = {"b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
    return int(number * powers[unit])
