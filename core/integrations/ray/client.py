"""The ingress's engine client for a model served by a Ray Serve deployment: everything before and
after generation stays corral's own (admission, chat templates, tokenization, checks, tool and
reasoning parsing, metrics, error shapes); generation goes to one of the deployment's replicas through
its handle, as a stream of delta outputs."""
import asyncio
import logging
import re
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, RayServeException

from corral.integrations.ray.replica import GenerateRequest, ReplicaInfo
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.server.engine_client import EngineClient
from corral.server.errors import (APIError, EngineDeadError, InternalServerError, ModelUnavailableError,
                                  QueueFullError)
from corral.server.model_state import ModelState

logger = logging.getLogger(__name__)


def deployment_name(model: str) -> str:
    """The Ray Serve deployment of a served model's name."""
    return "model-" + re.sub(r"[^\w.-]", "_", model)


class RayEngineClient(EngineClient):
    """Runs in the ingress replica. The model's files less its weights come from a replica (no download
    on the ingress's node); a replica that dies before answering is retried once on another."""

    def __init__(self, spec, metrics=None, plugin_manager=None, **kwargs):
        super().__init__(spec, metrics, plugin_manager, **kwargs)
        self._deployment = None
        self._files: tempfile.TemporaryDirectory | None = None
        self._info: ReplicaInfo | None = None

    @property
    def deployment(self):
        if self._deployment is None:
            app = serve.get_replica_context().replica_id.deployment_id.app_name
            self._deployment = serve.get_deployment_handle(deployment_name(self.name), app_name=app)
        return self._deployment

    async def _load(self):
        try:
            self._info = info = await self.deployment.info.remote()
            if self.input_processor is None:
                await asyncio.to_thread(self._prepare)
            self.input_processor.max_model_len, self.input_processor.vocab_size = info.max_model_len, info.vocab_size
            self.state, self.error, self.settled_once = ModelState.READY, None, True
            self._settled.set()
            logger.info("model %s is ready on Ray Serve (deployment %s)", self.name, deployment_name(self.name))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._set_error(str(_api_error(self.name, e)))

    def _resolve_model_dir(self) -> Path:
        self._files = tempfile.TemporaryDirectory(prefix="corral-ray-")
        model_dir = Path(self._files.name)
        for name, data in self._info.files.items():
            (model_dir / name).write_bytes(data)
        return model_dir

    def _send(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
              arrival: float, cache_salt: str | None) -> None:
        """Nothing yet: a replica takes a request with the call that streams its outputs, at the first read."""
        return None

    async def _stream(self, request_id: str, prompt: str | None, prompt_ids: list[int], params: SamplingParams,
                      arrival: float, cache_salt: str | None, collector: None) -> AsyncIterator[RequestOutput]:
        request = GenerateRequest(request_id, prompt, prompt_ids, params, cache_salt, self.spec.startup_timeout)
        answered = False
        for attempt in range(2):
            outputs = self.deployment.options(stream=True).generate.remote(request)
            ended = False
            try:
                async for output in outputs:
                    answered, ended = True, output.finished
                    yield output
                    if ended:
                        return
                ended = True
                raise InternalServerError(f"model {self.name}: the replica's stream ended before the request did")
            except RayActorError:
                ended = True
                if answered or attempt:
                    raise EngineDeadError(f"the replica of model {self.name} serving this request died; the "
                                          "request was not completed (retry shortly)") from None
                logger.warning("model %s: a replica died before answering %s; trying another", self.name, request_id)
            except (RayTaskError, RayServeException) as e:
                ended = True
                raise _api_error(self.name, e) from None
            finally:
                if not ended:  # left early: the replica aborts it
                    outputs.cancel()
                    if self.metrics is not None:
                        self.metrics.requests_finished.labels(self.name, "abort").inc()

    async def unload(self):
        """Nothing to unload here: replicas come and go with Ray's autoscaler (min_replicas 0 lets a model's
        deployment scale to zero)."""

    async def shutdown(self, timeout: float = 10.0):
        await super().shutdown(timeout)
        if self._files is not None:
            self._files.cleanup()


def _api_error(model: str, error: Exception) -> APIError:
    """An error from a replica as the API's own: a replica's APIError as it was raised there."""
    cause = error.cause if isinstance(error, RayTaskError) else error
    if isinstance(cause, APIError):
        return cause
    if isinstance(cause, BackPressureError):
        return QueueFullError(f"model {model}: every replica's queue is full; retry later")
    if isinstance(cause, (RayServeException, RayActorError)):
        return ModelUnavailableError(f"model {model} is unavailable on Ray Serve ({type(cause).__name__})")
    logger.error("model %s: a replica failed: %s", model, error)
    return InternalServerError(f"model {model}: internal error; see the replica's log")
