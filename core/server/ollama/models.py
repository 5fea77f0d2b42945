"""What /api/tags, /api/ps and /api/show say about a served model, read from its files (config.json and
the safetensors headers: size, parameter count, dtype), never from a loaded engine. A model not on this
machine yet (to be downloaded on its first load) has only what its reference says."""
import collections
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from corral.server.engine_client import EngineClient
from corral.server.errors import is_local_path
from corral.server.ollama.names import ollama_name

logger = logging.getLogger(__name__)

NEVER = datetime(9999, 12, 31, tzinfo=timezone.utc)  # expires_at of a model kept until the server stops


@dataclass(frozen=True, slots=True)
class ModelFacts:
    size: int = 0                    # bytes of its weight files
    digest: str = ""                 # sha256 of config.json and the weights' headers
    modified_at: str = ""
    family: str = ""                 # config.json's model_type
    parameter_count: int = 0
    quantization_level: str = ""     # the weights' dtype as safetensors names it: BF16, F16, F32
    config: dict = field(default_factory=dict)

    def details(self) -> dict:
        return {"parent_model": "", "format": "safetensors" if self.parameter_count else "",
                "family": self.family, "families": [self.family] if self.family else None,
                "parameter_size": parameter_size(self.parameter_count), "quantization_level": self.quantization_level}


def parameter_size(n: int) -> str:
    """Ollama's way: 8.0B, 134.52M."""
    if not n:
        return ""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}B" if unit == "B" else f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def read_facts(directory: Path) -> ModelFacts:
    config_bytes = (directory / "config.json").read_bytes()
    config = json.loads(config_bytes)
    digest, size, count, dtypes = hashlib.sha256(config_bytes), 0, 0, collections.Counter()
    for path in sorted(directory.glob("*.safetensors")):
        with open(path, "rb") as f:
            header = f.read(int.from_bytes(f.read(8), "little"))
        digest.update(header)
        size += path.stat().st_size
        for name, tensor in json.loads(header).items():
            if name != "__metadata__":
                numel = math.prod(tensor["shape"])
                count += numel
                dtypes[tensor["dtype"]] += numel
    modified = datetime.fromtimestamp((directory / "config.json").stat().st_mtime, timezone.utc)
    return ModelFacts(size, digest.hexdigest(), iso(modified), config.get("model_type") or "", count,
                      dtypes.most_common(1)[0][0] if dtypes else "", config)


class ModelFactsCache:
    """Facts per model directory, read again when its config.json changes."""

    def __init__(self):
        self._facts: dict[Path, tuple[int, ModelFacts]] = {}

    def get(self, client: EngineClient) -> ModelFacts:
        directory = model_dir(client)
        if directory is None:
            return ModelFacts()
        try:
            stamp = (directory / "config.json").stat().st_mtime_ns
            cached = self._facts.get(directory)
            if cached is None or cached[0] != stamp:
                cached = self._facts[directory] = (stamp, read_facts(directory))
        except (OSError, ValueError, KeyError) as e:
            logger.warning("%s: cannot read its files for the Ollama API: %s", client.name, e)
            return ModelFacts()
        return cached[1]


def model_dir(client: EngineClient) -> Path | None:
    """Where the model's files are: the loaded directory, else a local path or a complete store copy."""
    if client.model_dir is not None:
        return client.model_dir
    from corral.registry.errors import SourceError
    from corral.registry.manifests import ManifestRegistry
    from corral.registry.sources import find_stored, local_model_dir, parse_ref
    from corral.store import ModelStore
    try:
        if (path := local_model_dir(client.spec.model)) is not None:
            return path
        store = ModelStore()
        copies = find_stored(store, parse_ref(client.spec.model, ManifestRegistry.load(store.root)), exact=True)
        return copies[0].path if copies else None
    except (SourceError, OSError):
        return None


def iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def tag(client: EngineClient, facts: ModelFacts) -> dict:
    """An /api/tags entry."""
    name = ollama_name(client)
    return {"name": name, "model": name, "modified_at": facts.modified_at or iso(datetime.now(timezone.utc)),
            "size": facts.size, "digest": facts.digest, "details": facts.details()}


def process(client: EngineClient, facts: ModelFacts, keep_alive: float | None) -> dict:
    """An /api/ps entry of a loaded model: when it unloads, and what it holds on the GPU."""
    return {**tag(client, facts), "expires_at": iso(expires_at(client, keep_alive)),
            "size_vram": facts.size if on_gpu(client) else 0, "context_length": client.max_model_len}


def expires_at(client: EngineClient, keep_alive: float | None) -> datetime:
    if keep_alive is None:
        return NEVER
    idle = 0.0 if client.num_pending else time.monotonic() - client.last_used
    try:
        return datetime.now(timezone.utc) + timedelta(seconds=max(keep_alive - idle, 0.0))
    except OverflowError:  # a keep_alive past year 9999 (or infinite) is as good as never
        return NEVER


def on_gpu(client: EngineClient) -> bool:
    device = client.spec.device
    if device is None:
        import torch
        return torch.cuda.is_available()
    return device.startswith("cuda")


def show(client: EngineClient, facts: ModelFacts) -> dict:
    """/api/show: details, the architecture's numbers as model_info, the chat template (Jinja: corral renders
    the model's own template), sampling defaults as parameters, what the model can do, its manifest's license.
    Reads files: call it off the event loop."""
    from corral.registry.sources import find_manifest
    config, arch = facts.config, facts.family or "unknown"
    info = {"general.architecture": arch, "general.parameter_count": facts.parameter_count,
            "general.basename": client.name,
            f"{arch}.context_length": client.max_model_len or config.get("max_position_embeddings"),
            f"{arch}.embedding_length": config.get("hidden_size"),
            f"{arch}.block_count": config.get("num_hidden_layers"),
            f"{arch}.attention.head_count": config.get("num_attention_heads"),
            f"{arch}.attention.head_count_kv": config.get("num_key_value_heads"),
            f"{arch}.vocab_size": config.get("vocab_size")}
    defaults = client.input_processor.defaults if client.input_processor is not None else client.spec.sampling
    template = getattr(client.tokenizer, "chat_template", None) if client.tokenizer is not None else None
    capabilities = ["completion", "tools"]
    if client.reasoning_parser is not None or (client.input_processor is None and arch.startswith("qwen3")):
        capabilities.append("thinking")  # known once loaded; before, from the architecture
    local = is_local_path(client.spec.model)
    reference = client.name if local else client.spec.model
    manifest = None if local else find_manifest(client.spec.model)
    return {"modelfile": f"# served by corral\nFROM {reference}\n",
            "parameters": "\n".join(f"{k} {v}" for k, v in sorted(defaults.items())),
            "template": template if isinstance(template, str) else "", "details": facts.details(),
            "model_info": {k: v for k, v in info.items() if v is not None}, "capabilities": capabilities,
            "modified_at": facts.modified_at or iso(datetime.now(timezone.utc)),
            "license": (manifest.license if manifest else None) or ""}
