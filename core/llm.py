import itertools
from pathlib import Path

from corral.config import EngineConfig
from corral.engine.llm_engine import LLMEngine
from corral.outputs import EmbeddingRequestOutput, RequestOutput
from corral.pooling_params import PoolingParams
from corral.registry.plugins import PluginManager
from corral.sampling_params import SamplingParams


class LLM:
    """One engine in this process. `model` is a local directory, or any reference the installed
    source plugins resolve (a manifest name such as qwen3-4b, hf:Org/Name, ms:Org/Name).

        llm = LLM("path/to/model")
        llm.generate(["Hello"], SamplingParams(max_tokens=32))

    A model served for embeddings (`task="embed"`, or a sentence-transformers folder) gives vectors:
    `LLM("qwen3-embedding-0.6b").embed(["Hello"])[0].outputs.embedding`.
    """

    def __init__(self, model: str, plugin_manager: PluginManager | None = None, **engine_args):
        from corral.registry.sources import find_manifest
        self.plugin_manager = plugin_manager or PluginManager()
        model_dir = resolve(model, self.plugin_manager)
        if engine_args.get("max_model_len") is None and (manifest := find_manifest(model)) is not None:
            engine_args["max_model_len"] = manifest.max_model_len  # a manifest's default (None: the model's own)
        self.engine = LLMEngine(EngineConfig(model=str(model_dir), **engine_args), self.plugin_manager)
        self._ids = itertools.count()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: str | list[int] | list[str] | list[list[int]],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = False, add_special_tokens: bool = True) -> list[RequestOutput]:
        """Prompts are strings or token-id lists; one SamplingParams for all or one each."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = self._per_prompt(sampling_params, len(prompts))
        return self._run(prompts, lambda request_id, i: self.engine.add_request(
            request_id, prompts[i], params[i], add_special_tokens=add_special_tokens, final_only=True), use_tqdm)

    def embed(self, prompts: str | list[int] | list[str] | list[list[int]], pooling_params: PoolingParams | None = None,
              use_tqdm: bool = False, add_special_tokens: bool = True,
              truncate: bool = False) -> list[EmbeddingRequestOutput]:
        """One pooled vector per prompt (strings or token-id lists), in `.outputs.embedding`; `truncate`
        keeps the first max_model_len tokens of a longer prompt instead of refusing it."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = pooling_params or PoolingParams()
        return self._run(prompts, lambda request_id, i: self.engine.add_pooling_request(
            request_id, prompts[i], params, add_special_tokens, truncate), use_tqdm)

    def chat(self, messages: list[dict] | list[list[dict]],
             sampling_params: SamplingParams | list[SamplingParams] | None = None,
             chat_template_kwargs: dict | None = None, add_generation_prompt: bool = True,
             use_tqdm: bool = False) -> list[RequestOutput]:
        """One conversation (a list of {"role", "content"} dicts) or a list of them; one
        SamplingParams for all or one each."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        params = self._per_prompt(sampling_params, len(conversations))
        prompts = [self.engine.input_processor.render_chat(c, add_generation_prompt, chat_template_kwargs)
                   for c in conversations]
        return self._run(prompts, lambda request_id, i: self.engine.add_request(
            request_id, prompts[i], params[i], add_special_tokens=False, final_only=True), use_tqdm)

    def _per_prompt(self, params: SamplingParams | list[SamplingParams] | None,
                    num_prompts: int) -> list[SamplingParams]:
        """None: the model's own defaults (generation_config.json), as the server applies them."""
        if not isinstance(params, list):
            return [params or self.engine.input_processor.default_sampling_params()] * num_prompts
        if len(params) != num_prompts:
            raise ValueError(f"got {num_prompts} prompts but {len(params)} sampling params")
        return params

    def _run(self, prompts, add, use_tqdm) -> list:
        """`add(request_id, i)` adds prompt i; the final outputs, in the prompts' order."""
        ids = [str(next(self._ids)) for _ in prompts]
        finished: dict[str, RequestOutput] = {}
        progress = _progress(len(ids), use_tqdm)
        try:  # a prompt that fails validation takes the ones added before it out again
            for i, request_id in enumerate(ids):
                add(request_id, i)
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.finished:
                        finished[output.request_id] = output
                        progress.update(1)
        except BaseException:
            for request_id in ids:
                self.engine.abort_request(request_id)
            raise
        finally:
            progress.close()
        return [finished[i] for i in ids]


def resolve(model: str, plugin_manager: PluginManager) -> Path:
    from corral.registry.sources import local_model_dir, resolve_model
    return local_model_dir(model) or resolve_model(model, plugin_manager=plugin_manager)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, desc="generating", disable=not enabled)
