from pathlib import Path

from corral.config import EngineConfig
from corral.engine.core import EngineCore
from corral.engine.input_processor import InputProcessor
from corral.engine.output_processor import OutputProcessor
from corral.engine.request import Request
from corral.outputs import EmbeddingRequestOutput, RequestOutput
from corral.pooling_params import PoolingParams
from corral.registry.plugins import PluginManager
from corral.sampling_params import SamplingParams


class LLMEngine:
    """Input processor, engine core and output processor in one process: prompts in, RequestOutputs
    out. The server runs the same two processors around an engine in another process."""

    def __init__(self, config: EngineConfig, plugin_manager: PluginManager | None = None):
        self.config = config
        self.core = EngineCore(config, plugin_manager)
        self.input_processor = InputProcessor.from_model_dir(config.model, config.max_model_len,
                                                             self.core.model_config.vocab_size,
                                                             pooler=self.core.pooler_config)
        self.model_name = Path(config.model).name
        self.tokenizer = self.input_processor.tokenizer
        self.output_processor = OutputProcessor(self.tokenizer)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    delta: bool = False, add_special_tokens: bool = True, final_only: bool = False,
                    cache_salt: str | None = None):
        """`delta`: outputs carry only what is new; `final_only`: one output, when the request ends;
        `cache_salt`: only requests with the same salt share prefix-cache blocks."""
        inputs = self.input_processor
        inputs.check_task("generate", self.model_name)
        prompt_ids = inputs.tokenize(prompt, add_special_tokens)
        inputs.check_prompt(prompt_ids)
        inputs.check_params(params)
        child_ids = self.output_processor.add_request(request_id, prompt if isinstance(prompt, str) else None,
                                                      prompt_ids, params, delta, final_only)
        for request in inputs.engine_requests(child_ids, prompt_ids, params, cache_salt=cache_salt):
            self.core.add_request(Request.from_engine_core_request(request))

    def add_pooling_request(self, request_id: str, prompt: str | list[int], params: PoolingParams,
                            add_special_tokens: bool = True, truncate: bool = False, cache_salt: str | None = None):
        """An embedding request: one output, with the prompt's pooled vector. `truncate`: keep the first
        max_model_len tokens of a longer prompt instead of refusing it."""
        inputs = self.input_processor
        inputs.check_task("embed", self.model_name)
        inputs.check_pooling_params(params, self.model_name)
        prompt_ids = inputs.tokenize(prompt, add_special_tokens, truncate)
        inputs.check_pooling_prompt(prompt_ids)
        self.output_processor.add_pooling_request(request_id, prompt_ids)
        self.core.add_request(Request.from_engine_core_request(
            inputs.pooling_request(request_id, prompt_ids, params, cache_salt=cache_salt)))

    def abort_request(self, request_id: str):
        self.core.abort_requests(self.output_processor.child_ids(request_id))
        self.output_processor.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def step(self) -> list[RequestOutput | EmbeddingRequestOutput]:
        outputs, to_abort = self.output_processor.process(self.core.step())
        self.core.abort_requests(to_abort)
        return outputs
