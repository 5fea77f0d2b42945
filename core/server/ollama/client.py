"""A running corral's Ollama API as the CLI uses it (`corral run`, `corral ps`, `corral stop`): at --host /
--port, else CORRAL_HOST / CORRAL_PORT, else `corral serve`'s defaults; with CORRAL_API_KEY when set. The
standard library only, so the CLI needs nothing the server does."""
import argparse
import ipaddress
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import fields

PROBE_TIMEOUT = 1.0


class ServerError(RuntimeError):
    """The server answered an error, or no server answers: one line for the CLI."""


def add_server_flags(parser):
    parser.add_argument("--host", help="the server's address (default: $CORRAL_HOST, else 127.0.0.1)")
    parser.add_argument("--port", type=port_number, help="the server's port (default: $CORRAL_PORT, else 8000)")


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535 (argparse puts the flag's name before this error)."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, got {text!r}")
    return port


def host_problem(host: str) -> str | None:
    """Why `host` is not a host name or an IP address (http://x, 'a b', [::1), or None."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
            return None
        except ValueError:
            return f"{host!r} is not a host name or an IP address (give --port apart, and no scheme)"
    return None if re.fullmatch(r"[\w.-]+", host) else f"{host!r} is not a host name or an IP address"


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
        host, where = (args.host, "--host") if args.host else (env.get("CORRAL_HOST"), "CORRAL_HOST")
        if not host:
            host = defaults["host"]
        elif problem := host_problem(host):
            raise ValueError(f"{where}: {problem}")
        port = args.port
        if port is None:
            try:
                port = port_number(env.get("CORRAL_PORT") or str(defaults["port"]))
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"CORRAL_PORT {e}") from None
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
