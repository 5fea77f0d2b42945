"""What can go wrong while finding and fetching a model. Each message is one line a person can act on;
`http_status` is what an API should answer with when the failure reaches a request."""


class SourceError(RuntimeError):
    """Base class: a model could not be resolved, fetched or verified."""

    http_status = 500


class UnknownModelError(SourceError, LookupError):
    """A reference is not a manifest name, a hub id or an existing path."""

    http_status = 404

    def __init__(self, message: str, suggestions: list[str] | None = None):
        super().__init__(message)
        self.suggestions = suggestions or []


class ModelNotFoundError(SourceError, LookupError):
    """The source answered, and it has no such repository (or revision, or file)."""

    http_status = 404


class GatedRepoError(SourceError, PermissionError):
    """The repository exists but needs a token that has been granted access."""

    http_status = 403


class HubUnreachableError(SourceError, ConnectionError):
    """The hub endpoint did not answer (network down, DNS, firewall, 5xx)."""

    http_status = 503

    def __init__(self, message: str, endpoint: str | None = None):
        super().__init__(message)
        self.endpoint = endpoint


class CorruptFileError(SourceError):
    """A file kept failing size or sha256 verification."""

    http_status = 502


class SourceUnavailableError(SourceError):
    """The source needs a library or package that is not installed."""

    http_status = 500


class StoreNotWritableError(SourceError, PermissionError):
    """The model store cannot be written (a read-only mount, another user's directory)."""


class ManifestError(SourceError, ValueError):
    """A manifest file is malformed."""

    http_status = 500
