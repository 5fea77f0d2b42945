"""/docs, /redoc and /openapi.json describe every route: served only with --enable-docs, and then behind
the API key when there is one."""
import httpx
import pytest

from tests.server.helpers import API_KEY, ServerThread

DOCS = ["/docs", "/redoc", "/openapi.json"]


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory):
    from corral.server.config import build_config
    missing = tmp_path_factory.mktemp("docs") / "no-such-model"  # no engine: docs need none
    config = build_config([str(missing)], server={"api_key": API_KEY, "enable_docs": True},
                          model_defaults={"device": "cpu"})
    server = ServerThread(config).start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", DOCS)
def test_docs_are_not_served_by_default(http, path):
    assert http.get(path).status_code == 404


@pytest.mark.parametrize("path", DOCS)
def test_docs_are_served_with_enable_docs_and_the_api_key(docs_server, path):
    r = httpx.get(docs_server.url + path, headers={"Authorization": f"Bearer {API_KEY}"})
    assert r.status_code == 200


@pytest.mark.parametrize("path", DOCS)
def test_docs_need_the_api_key(docs_server, path):
    assert httpx.get(docs_server.url + path).status_code == 401
