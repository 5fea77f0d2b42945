"""A running corral's Ollama API as the CLI uses it (`corral run`, `corral ps`, `corral stop`): at --host /
--port, else CORRAL_HOST / CORRAL_PORT, else `corral serve`'s defaults; with CORRAL_API_KEY when set. The
standard library only, so the CLI needs nothing the server does."""
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import fields

PROBE_TIMEOUT = 1.0


class ServerError(RuntimeError):
    """The server answered an error, or no server answers: one line for the CLI."""


def add_server_flags(parser):
    parser.add_argument("--host", help="the server's address (default: $CORRAL_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=int, help="the server's port (default: $CORRAL_PORT, else 8000)")


class OllamaAPI:
    def __init__(self, host: str, port: int, api_key: str | None = None):
        host = "127.0.0.1" if host in ("", "0.0.0.0") else "::1" if host == "::" else host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        self.api_key = api_key

    @classmethod
    def from_args(cls, args, env=None) -> "OllamaAPI":
        from corral.server.config import ServerConfig
        env = os.environ if env is None else env
        defaults = {f.name: f.default for f in fields(ServerConfig)}
        host = args.host or env.get("CORRAL_HOST") or defaults["host"]
        port = args.port or int(env.get("CORRAL_PORT") or defaults["port"])
        return cls(host, port, env.get("CORRAL_API_KEY"))

    def running(self) -> bool:
        """Whether a server answers here the way Ollama's clients probe it."""
        try:
            with urllib.request.urlopen(self.url + "/", timeout=PROBE_TIMEOUT) as response:
                return response.status == 200 and response.read(64).startswith(b"Ollama is running")
        except (OSError, ValueError):
            return False

    def _open(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            raise ServerError(_error_text(e.read()) or f"HTTP {e.code} from {self.url}{path}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServerError(f"no corral server answers at {self.url} ({reason}); start one with `corral serve`, "
                              "or name it with --host/--port or CORRAL_HOST/CORRAL_PORT") from None

    def get(self, path: str) -> dict:
        with self._open("GET", path, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def post(self, path: str, body: dict) -> dict:
        with self._open("POST", path, body, timeout=600) as response:
            return json.loads(response.read() or b"{}")

    def lines(self, path: str, body: dict) -> Iterator[dict]:
        """The NDJSON lines of a streamed answer; an error line raises."""
        with self._open("POST", path, body) as response:
            for raw in response:
                if not raw.strip():
                    continue
                data = json.loads(raw)
                if "error" in data:
                    raise ServerError(data["error"])
                yield data


def _error_text(body: bytes) -> str:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return body.decode(errors="replace").strip()[:200]
    return error if isinstance(error, str) else (error or {}).get("message", "")
