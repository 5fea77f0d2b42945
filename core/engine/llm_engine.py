import dataclasses
import time

from corral.config import EngineConfig
from corral.engine.core import EngineCore
from corral.engine.output_processor import OutputProcessor
from corral.engine.request import Request
from corral.engine.tokenizer import eos_token_ids, load_tokenizer
from corral.outputs import RequestOutput
from corral.registry.plugins import PluginManager
from corral.sampling_params import INT64_MIN, SamplingParams


class LLMEngine:
    """Tokenizer, engine core and output processor in one process: strings in, RequestOutputs out."""

    def __init__(self, config: EngineConfig, plugin_manager: PluginManager | None = None):
        self.config = config
        self.tokenizer = load_tokenizer(config.model)
        self.eos_token_ids = eos_token_ids(config.model, self.tokenizer)
        self.core = EngineCore(config, plugin_manager)
        self.output_processor = OutputProcessor(self.tokenizer)

    def tokenize(self, prompt: str | list[int], add_special_tokens: bool = True) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
        return list(prompt)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                    delta: bool = False, add_special_tokens: bool = True, final_only: bool = False):
        """`delta`: outputs carry only what is new; `final_only`: one output, when the request ends."""
        prompt_ids = self.tokenize(prompt, add_special_tokens)
        requests = [Request(child_id, prompt_ids, child_params(params, i), self.eos_token_ids, time.monotonic())
                    for i, child_id in enumerate(self.output_processor.child_ids_for(request_id, params))]
        for request in requests:
            self.core.validate_request(request)
        self.output_processor.add_request(request_id, prompt if isinstance(prompt, str) else None,
                                          prompt_ids, params, delta, final_only)
        for request in requests:
            self.core.add_request(request)

    def abort_request(self, request_id: str):
        self.core.abort_requests(self.output_processor.child_ids(request_id))
        self.output_processor.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    def step(self) -> list[RequestOutput]:
        outputs, to_abort = self.output_processor.process(self.core.step())
        self.core.abort_requests(to_abort)
        return outputs


def child_params(params: SamplingParams, index: int) -> SamplingParams:
    """The params of sequence `index` of n: n=1, and a distinct seed when one was given."""
    # seed + index, wrapped around the int64 range that seeds take
    seed = None if params.seed is None else (params.seed + index - INT64_MIN) % 2**64 + INT64_MIN
    return dataclasses.replace(params, n=1, seed=seed)
