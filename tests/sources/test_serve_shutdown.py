"""Stopping `corral serve` while a model downloads stops the download too (Ctrl-C, `docker stop`):
it used to run on in its worker thread until the whole model was in, and the process with it."""
import json
import time

import httpx

from corral.store import META_FILE
from tests.sources.helpers import TINY
from tests.sources.hub_server import FakeHFHub

DELAY = 0.5  # seconds before each file's bytes


class SlowFileHub(FakeHFHub):
    """The Hub API, answering every file download after DELAY seconds."""

    def route(self, h, method, path, query):
        if method == "GET" and self.is_file_path(path):
            time.sleep(DELAY)
        return super().route(h, method, path, query)


def test_stopping_the_server_mid_download_stops_the_download(repos, isolated_env, monkeypatch):
    from corral.server.config import build_config
    from tests.server.helpers import ServerThread
    with SlowFileHub(repos) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("CORRAL_DOWNLOAD_WORKERS", "1")  # one file at a time
        config = build_config([f"hf:{TINY}"], served_names=["tiny"], model_defaults={"device": "cpu"})
        server = ServerThread(config)
        server.thread.start()
        deadline = time.monotonic() + 30
        while not hub.gets():  # the first file is on its way
            assert time.monotonic() < deadline, "the download did not start"
            time.sleep(0.05)
        server.stop()  # before the fix it returned only once all files were in
        stopped = len(hub.gets())
        time.sleep(len(repos[TINY].files) * DELAY + 2)  # time enough to fetch everything, one by one
        assert len(hub.gets()) <= stopped + 1  # at most the file in flight
        meta = next(isolated_env.joinpath("models").rglob(META_FILE), None)
        assert meta is None or not json.loads(meta.read_text())["complete"]
        assert not httpx.get(f"{hub.url}/", timeout=5).is_error  # the hub itself is still up
