"""The states a served model goes through, as /v1/models and /health show them."""
import enum


class ModelState(str, enum.Enum):
    """unloaded -> (resolving | downloading) -> loading -> ready; error when loading fails;
    ready -> restarting -> ready when its engine dies (restarting after a backoff while it keeps dying);
    ready -> sleeping (its engine kept, its device memory freed) -> loading (waking) -> ready."""

    UNLOADED = "unloaded"
    RESOLVING = "resolving"
    DOWNLOADING = "downloading"
    LOADING = "loading"
    READY = "ready"
    RESTARTING = "restarting"
    SLEEPING = "sleeping"
    ERROR = "error"

    def __str__(self) -> str:
        return self.value
