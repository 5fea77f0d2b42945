"""Request bodies: a prompt of token ids takes a fast path that must agree with pydantic's own union."""
import pytest
from pydantic import ConfigDict, TypeAdapter, ValidationError

from corral.server.protocol import CompletionRequest, EmbeddingRequest

PROMPTS = [[1, 2, 3], [0], list(range(2048)), [2**70], [-1], [True, 1], [1, "2"], [1, 2.0], [1, None], [], "text",
           ["a", "b"], [[1, 2], [3]], [[1], "a"], [[True]], None, 5]


def union_says(value):
    union = TypeAdapter(str | list[str] | list[int] | list[list[int]], config=ConfigDict(strict=True))
    try:
        return union.validate_python(value)
    except ValidationError:
        return ValidationError


@pytest.mark.parametrize("body, field", [(CompletionRequest, "prompt"), (EmbeddingRequest, "input")])
def test_a_prompt_validates_as_the_strict_union_would(body, field):
    for value in PROMPTS:
        try:
            ours = getattr(body.model_validate({"model": "m", field: value}), field)
        except ValidationError:
            ours = ValidationError
        assert ours == union_says(value), value
