"""OpenAI-style errors: {"error": {"message", "type", "param", "code"}} with the right HTTP status."""
import os
import re
from http import HTTPStatus


class APIError(Exception):
    """An error the API returns as it is; anything else becomes a 500 without details."""

    status_code = HTTPStatus.INTERNAL_SERVER_ERROR
    type = "internal_server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequestError(APIError):
    status_code = HTTPStatus.BAD_REQUEST
    type = "invalid_request_error"


class RequestTooLargeError(APIError):
    status_code = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    type = "invalid_request_error"
    code = "request_too_large"


class AuthenticationError(APIError):
    status_code = HTTPStatus.UNAUTHORIZED
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(APIError):
    status_code = HTTPStatus.NOT_FOUND
    type = "not_found_error"


class ModelNotFoundError(APIError):
    status_code = HTTPStatus.NOT_FOUND
    type = "invalid_request_error"
    code = "model_not_found"


class ConflictError(APIError):
    """The request conflicts with the model's state (it has requests in flight, or cannot do that)."""

    status_code = HTTPStatus.CONFLICT
    type = "invalid_request_error"
    code = "conflict"


class QueueFullError(APIError):
    status_code = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"
    code = "queue_full"


class ModelUnavailableError(APIError):
    """The model is loading, restarting, unloaded or broken; or its engine died under the request."""

    status_code = HTTPStatus.SERVICE_UNAVAILABLE
    type = "service_unavailable_error"
    code = "model_unavailable"


class EngineDeadError(ModelUnavailableError):
    code = "engine_dead"


class InternalServerError(APIError):
    pass


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_error(errors: list[dict]) -> BadRequestError:
    """A pydantic / FastAPI validation error list as one 400 naming the first bad parameter."""
    if not errors:
        return BadRequestError("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = first.get("ctx", {}).get("error", "")
        return BadRequestError(f"the request body is not valid JSON: {detail}".rstrip(": "), code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body" and not _is_type_tag(p)]
    if not loc:
        return BadRequestError(f"the request body must be a JSON object: {first.get('msg')}", code="invalid_json")
    param = ".".join(loc)
    missing = first.get("type") == "missing"
    message = f"{param}: {first.get('msg')}"
    if "input" in first and not missing:
        message += f" (got {_short(first['input'])})"
    if len(errors) > 1:
        message += f"; and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}"
    code = ("missing_required_parameter" if missing else
            "invalid_value" if first.get("type") in VALUE_ERRORS else "invalid_type")
    return BadRequestError(message, param=param, code=code)


# pydantic error types for a value of the right type that breaks a constraint
VALUE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "too_short", "too_long",
                "literal_error", "enum", "value_error", "string_too_short", "string_too_long"}


def _is_type_tag(part) -> bool:
    # pydantic names union branches in `loc`: 'str', 'list[str]', 'function-after[...]', 'TextPart'
    return isinstance(part, str) and (part in ("str", "int", "float", "bool", "list", "dict", "none")
                                      or "[" in part or "-" in part or part[:1].isupper())


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_local_path(reference: str) -> bool:
    """A model reference that names a place on this machine rather than a hub repository or a name."""
    scheme = reference.partition(":")[0].lower()
    return (scheme in ("local", "file") or reference.startswith(("/", "./", "../", "~", ".\\"))
            or reference.lower().endswith(".gguf") or os.path.isabs(reference) or os.path.exists(reference))


# an absolute path: after a space, quote or bracket (not inside a URL or an Org/Name repository)
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\-])(?:~|[A-Za-z]:)?[/\\][\w.~-][^\s'\",;:()\[\]]*")


def without_paths(message: str, known: dict[str, str]) -> str:
    """`message` for a client: each known path as its description, any other absolute path as <path>."""
    for path, shown in sorted(known.items(), key=lambda item: -len(item[0])):
        message = message.replace(path, shown)
    return ABSOLUTE_PATH.sub("<path>", message)
