"""Each API dialect answers errors in its own shape: OpenAI's {"error": {...}} by default, Anthropic's or
Ollama's on the routes those dialects serve. A dialect registers the path prefixes it owns and how it
renders an APIError; every error handler, middleware included, asks here."""
from collections.abc import Callable
from dataclasses import dataclass

from corral.server.errors import APIError


@dataclass(frozen=True, slots=True)
class ErrorShape:
    prefixes: tuple[str, ...]
    render: Callable[[APIError], dict]


class ErrorShapes:
    def __init__(self):
        self._shapes: list[ErrorShape] = []

    def add(self, prefixes: tuple[str, ...], render: Callable[[APIError], dict]):
        self._shapes.append(ErrorShape(prefixes, render))

    def body(self, path: str, error: APIError) -> dict:
        for shape in self._shapes:
            if path.startswith(shape.prefixes):
                return shape.render(error)
        return error.body()
