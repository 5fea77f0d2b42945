"""What one request may cost the API process: a body of at most max_request_bytes, a prompt no longer in
characters than the context can hold, and tokenizer work (template rendering, encoding) a few at a time
on worker threads, never on the event loop."""
import asyncio

from starlette.responses import JSONResponse

from corral.engine.input_processor import PromptError
from corral.server.errors import RequestTooLargeError
from corral.server.serving import prompt_error

MAX_CONCURRENT_TOKENIZATIONS = 2
# what of a refused body is read and dropped, so that a client still sending it gets to read its 413
DRAIN_BYTES, DRAIN_SECONDS = 64 << 20, 2.0


class RequestSizeLimitMiddleware:
    """413 for a body past `max_bytes`: by its Content-Length, else (chunked) as soon as the bytes received
    pass it. The body is read here, so the app never parses one that is too large; the rest of a refused
    one is read and dropped (up to DRAIN_BYTES, for DRAIN_SECONDS at most), so that a client still sending
    it reads the 413 rather than a reset."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send):
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not (length.isdigit() and int(length) > DRAIN_BYTES):
            try:
                await asyncio.wait_for(self._drain(receive), DRAIN_SECONDS)
            except asyncio.TimeoutError:
                pass
        error = RequestTooLargeError(f"the request body is larger than this server takes ({self.max_bytes} bytes; "
                                     "--max-request-size)")
        body = scope["app"].state.error_shapes.body(scope["path"], error)
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)

    @staticmethod
    async def _drain(receive):
        """The rest of the body, dropped as it comes: the memory stays flat."""
        drained = 0
        while drained < DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            drained += len(message.get("body", b""))


class Tokenization:
    """Tokenizer work of one app, at most MAX_CONCURRENT_TOKENIZATIONS jobs at once on worker threads; the
    model's InputProcessor refuses text longer than the context before encoding it."""

    def __init__(self, limit: int = MAX_CONCURRENT_TOKENIZATIONS):
        self.slots = asyncio.Semaphore(limit)

    async def run(self, fn, *args):
        async with self.slots:
            return await asyncio.to_thread(fn, *args)

    @staticmethod
    def check_length(client, text: str, param: str):
        """A context_length_exceeded 400 for text that cannot fit in max_model_len tokens."""
        try:
            client.input_processor.check_text_length(text)
        except PromptError as e:
            raise prompt_error(e, param) from None

    @staticmethod
    def encode(client, text: str, param: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of a text that fits the context in characters; 400 for one the tokenizer cannot take."""
        try:
            return client.input_processor.tokenize(text, add_special_tokens)
        except PromptError as e:
            raise prompt_error(e, param) from None
