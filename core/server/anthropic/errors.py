"""Anthropic's error shape: {"type": "error", "error": {"type", "message"}}, its type told by the HTTP status."""
from corral.server.errors import APIError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               503: "overloaded_error", 529: "overloaded_error"}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def render_error(error: APIError) -> dict:
    return {"type": "error", "error": {"type": error_type(int(error.status_code)), "message": error.message}}
