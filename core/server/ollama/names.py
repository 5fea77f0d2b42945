"""Ollama's model names onto corral's: `qwen3:4b` is the manifest `qwen3-4b`, `:latest` is the plain name,
`hf.co/Org/Name` is the Hugging Face repository Org/Name."""
from corral.registry.manifests import normalize_name
from corral.server.config import default_served_name
from corral.server.engine_client import EngineClient
from corral.server.errors import ModelNotFoundError

LATEST = ":latest"
HUB_PREFIXES = ("hf.co/", "huggingface.co/")


def ollama_name(client: EngineClient) -> str:
    """The name /api/tags and /api/ps give a served model: Ollama's names carry a tag, `:latest` when none."""
    return client.name if ":" in client.name else client.name + LATEST


def _key(name: str) -> str:
    """What two names that mean the same model have in common."""
    name = name.strip().removesuffix(LATEST)
    for prefix in HUB_PREFIXES:
        if name.lower().startswith(prefix):
            name = name[len(prefix):]
    return normalize_name(name)


def find_served(registry, name: str) -> EngineClient:
    """The served model `name` means: a served name or alias as in the OpenAI API, else the same name in
    Ollama's form (a tag, `:latest`, a manifest's `family:size`, hf.co/...); 404 in Ollama's words."""
    if name in registry.names:
        return registry.clients[registry.names[name]]
    key = _key(name)
    for client in registry:
        spec = client.spec
        if key in {_key(n) for n in (client.name, *spec.aliases, spec.model, default_served_name(spec.model))}:
            return client
    raise ModelNotFoundError(f'model "{name}" not found, try pulling it first', param="model")


def reference(name: str) -> str:
    """The corral reference an Ollama name pulls: hf.co/Org/Name[:tag] -> hf:Org/Name; qwen3:4b as it is
    (a manifest name, matched with its colon as a dash); name:latest -> name."""
    name = name.strip().removesuffix(LATEST)
    for prefix in HUB_PREFIXES:
        if name.lower().startswith(prefix):
            return "hf:" + name[len(prefix):].partition(":")[0]
    return name
