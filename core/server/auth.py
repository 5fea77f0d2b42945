"""API keys: `--api-key` and the keys of `--api-key-file`, checked on every protected path. Each key
has an id (a digest, never the key) that the routes use to keep callers' prefix caches apart."""
import hashlib
import secrets
from pathlib import Path

from fastapi.responses import JSONResponse

from corral.config import ConfigError
from corral.server.errors import AuthenticationError

PROTECTED = ("/v1/", "/api/", "/tokenize", "/detokenize", "/docs", "/redoc", "/openapi.json")


def read_key_file(path: str | Path) -> list[str]:
    """One key per line; blank lines and lines starting with # are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not keys:
        raise ConfigError(f"the API key file {path} holds no key")
    return keys


class APIKeys:
    def __init__(self, keys: list[str]):
        self._keys = [(k.encode(), hashlib.sha256(b"corral api key\0" + k.encode()).hexdigest()[:16]) for k in keys]

    @classmethod
    def from_config(cls, config) -> "APIKeys | None":
        keys = ([config.api_key] if config.api_key else []) + (read_key_file(config.api_key_file)
                                                                 if config.api_key_file else [])
        return cls(keys) if keys else None

    def identify(self, token: bytes) -> str | None:
        """The id of the key `token` is, or None. Every key is compared, in constant time each."""
        found = None
        for key, key_id in self._keys:
            if secrets.compare_digest(token, key):
                found = key_id
        return found


def given_key(headers: dict[bytes, bytes]) -> bytes | None:
    """The key a request brings: `Authorization: Bearer KEY` (OpenAI's way), else `x-api-key: KEY` (Anthropic's);
    None without either."""
    if (authorization := headers.get(b"authorization")) is not None:
        scheme, _, token = authorization.partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" else b""
    return headers.get(b"x-api-key")


class APIKeyMiddleware:
    """`Authorization: Bearer KEY` or `x-api-key: KEY` on the protected paths; /health and /metrics stay open. The
    request's state gets `api_key_id`."""

    def __init__(self, app, keys: APIKeys):
        self.app, self.keys = app, keys

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED) and scope["method"] != "OPTIONS":
            given = given_key(dict(scope["headers"]))
            key_id = self.keys.identify(given) if given is not None else None
            if key_id is None:
                message = ("Missing API key: send `Authorization: Bearer KEY` or `x-api-key: KEY`" if given is None
                           else "Invalid API key")
                body = scope["app"].state.error_shapes.body(scope["path"], AuthenticationError(message))
                response = JSONResponse(body, status_code=401,
                                        headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
            scope.setdefault("state", {})["api_key_id"] = key_id
        await self.app(scope, receive, send)


def cache_salt(request, requested: str | None) -> str | None:
    """The salt of a request's prefix-cache blocks: its own `cache_salt` (vLLM's), under its API key's
    id when the server keeps callers apart by key (`prefix_cache_isolation = "key"`, the default)."""
    key_id = getattr(request.state, "api_key_id", None)
    if key_id is None or request.app.state.config.prefix_cache_isolation != "key":
        return requested
    return f"{key_id}\0{requested or ''}"
