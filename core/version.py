"""corral's version, as its installed distribution says."""
import importlib.metadata


def version() -> str:
    try:
        return importlib.metadata.version("corral")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
