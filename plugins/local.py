"""A directory of Hugging Face files on this machine (config.json, tokenizer, weights), served where
it is. `.gguf` files are the `gguf` source's."""
from pathlib import Path

from corral.registry.errors import ModelNotFoundError
from corral.registry.hookspecs import hookimpl


class LocalSource:
    scheme = "local"
    label = "a local directory"

    def __init__(self, store):
        self.store = store

    def fetch(self, ref, progress, update: bool = False) -> Path:
        path = Path(ref.id).expanduser().resolve()
        if not path.exists():
            raise ModelNotFoundError(f"{path} does not exist")
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model directory: it has no config.json")
        if not any(path.glob("*.safetensors")) and not any(path.glob("pytorch_model*.bin")):
            raise ModelNotFoundError(f"{path} has no weights (*.safetensors or pytorch_model*.bin)")
        progress.set_state("ready")
        return path


@hookimpl
def register_sources(register):
    register("local", LocalSource)
