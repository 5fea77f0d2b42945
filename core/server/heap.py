"""The API process's long-lived heap, kept out of the garbage collector's full collections.

What the process holds once it has started, and again once each model is first ready (the modules loading it
imported, its tokenizer, the app), is mostly never garbage. Left to the collector, every full collection walks
it: in a process that imported torch and transformers that is 80-160 ms with the event loop stopped, once every
few seconds under load, and every stream and waiting request stops with it. vLLM's API server freezes its
startup heap for the same reason. At startup the heap is frozen as it is, garbage and all, which costs nothing;
at each model's first readiness it is refrozen, which first collects everything, the startup's garbage too, and
stops the loop about as long as a full collection. What a later reload creates stays with the collector, and
what an unloaded model's first load left frozen is given back at the next refreeze or at shutdown."""
import gc


def refreeze():
    """Collect what is garbage now and freeze the rest, after giving back what an earlier freeze held (a
    replaced model's tokenizer, say, so that it can be collected)."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def freeze():
    gc.freeze()


def unfreeze():
    gc.unfreeze()
