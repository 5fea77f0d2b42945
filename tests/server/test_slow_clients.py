"""Connections as corral serve configures uvicorn: a client gets header_timeout seconds to send a
request's headers, an idle keep-alive connection closes after timeout_keep_alive, and past
limit_concurrency connections a request gets 503; meanwhile normal requests are answered."""
import http.client
import socket
import threading
import time

import httpx
import pytest

from tests.server.helpers import ServerThread
from tests.tiny_models import build_model

REQUEST = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: slow\r\nAccept: */*\r\n\r\n"


PROTOCOLS = ["HeaderTimeoutH11Protocol", "HeaderTimeoutHttpToolsProtocol"]


@pytest.fixture(scope="module", params=PROTOCOLS)
def server(request, tmp_path_factory):
    """corral serve's uvicorn, once with each HTTP protocol it may use (httptools where it imports)."""
    import functools

    from corral.commands.serve import make_server, uvicorn_config
    from corral.server import connections
    protocol = getattr(connections, request.param, None)
    if protocol is None:
        pytest.skip("httptools is not installed")
    from corral.server.config import build_config
    config = build_config([str(build_model("llama", tmp_path_factory.mktemp("slow") / "llama"))],
                          served_names=["llama"],
                          server={"header_timeout": 1.0, "timeout_keep_alive": 1.0, "limit_concurrency": 4},
                          model_defaults={"max_model_len": 512, "kv_cache_memory_bytes": "16MiB", "device": "cpu"})
    running = ServerThread(config)
    settings = uvicorn_config(running.app, config, "warning")
    settings.http = functools.partial(protocol, header_timeout=config.header_timeout)
    running.server = make_server(settings, running.registry)
    running.thread = threading.Thread(target=running.server.run, daemon=True, name="uvicorn")
    yield running.start()
    running.stop()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.config.port), timeout=10)


def closed_after(sock: socket.socket) -> float:
    """Seconds until the server closes `sock` (it sends nothing first)."""
    start = time.monotonic()
    assert sock.recv(1024) == b""
    return time.monotonic() - start


def test_a_client_sending_its_headers_a_byte_at_a_time_is_closed_after_the_header_timeout(server):
    sock = connect(server)
    opened, sent, closed = time.monotonic(), 0, None
    try:
        for byte in REQUEST:
            sock.sendall(bytes([byte]))
            sent += 1
            if sent == 2:  # others are served meanwhile
                assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200
            time.sleep(0.2)
    except (BrokenPipeError, ConnectionResetError):
        closed = time.monotonic() - opened
    if closed is None:
        closed = closed_after(sock) + time.monotonic() - opened
    sock.close()
    assert sent < len(REQUEST) and 0.9 < closed < 3.0, (sent, closed)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(server):
    with connect(server) as sock:
        assert 0.9 < closed_after(sock) < 3.0


def test_an_idle_keep_alive_connection_is_closed_after_timeout_keep_alive(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.config.port, timeout=10)
    connection.request("GET", "/health")
    response = connection.getresponse()
    assert response.status == 200 and not response.will_close
    response.read()
    assert 0.9 < closed_after(connection.sock) < 3.0
    connection.close()


def test_past_limit_concurrency_connections_a_request_gets_503(server):
    idle = [connect(server) for _ in range(4)]
    try:
        time.sleep(0.2)
        refused = httpx.get(f"{server.url}/health", timeout=5)
        assert refused.status_code == 503 and refused.text == "Service Unavailable"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


def test_the_server_uses_httptools_where_it_is_installed():
    pytest.importorskip("httptools")
    from corral.server.connections import HeaderTimeoutHttpToolsProtocol, http_protocol
    assert http_protocol(1.0).func is HeaderTimeoutHttpToolsProtocol
