"""The API process's long-lived heap is frozen out of full garbage collections once the server has started and
a model is ready, garbage still goes, and the server's stop gives the heap back to the collector."""
import gc
import weakref

import openai

from corral.server.heap import refreeze
from tests.server.helpers import ServerThread


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the collector frees it


def test_a_ready_server_leaves_the_collector_only_what_serving_creates(tiny_model_dirs):
    from corral.server.config import build_config
    config = build_config([str(tiny_model_dirs["qwen3"])], served_names=["q"],
                          model_defaults={"max_model_len": 256, "kv_cache_memory_bytes": "8MiB", "device": "cpu"})
    server = ServerThread(config).start()
    try:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="none")
        client.completions.create(model="q", prompt=[5, 6, 7], max_tokens=3, temperature=0)
        frozen, tracked = gc.get_freeze_count(), len(gc.get_objects())
        assert frozen > 10 * tracked  # this process's modules, the app, the model's tokenizer: out of its walks
    finally:
        server.stop()
    assert gc.get_freeze_count() == 0


def test_a_refreeze_gives_back_what_an_earlier_freeze_held_once_it_is_garbage():
    try:
        node = Node()
        gone = weakref.ref(node)
        refreeze()  # node is alive: frozen with the rest
        del node
        gc.collect()
        assert gone() is not None  # frozen garbage: out of the collector's reach
        refreeze()
        assert gone() is None
    finally:
        gc.unfreeze()
