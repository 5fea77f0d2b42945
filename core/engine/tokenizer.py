import json
import sys
import time
from pathlib import Path

RENDER_TIMEOUT = 1.0  # seconds; a real chat template renders in milliseconds


class ChatTemplateError(ValueError):
    pass


class RenderTimeout(ChatTemplateError):
    pass


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ValueError(f"cannot load the tokenizer of {model_dir}: {' '.join(str(e).split())}") from e
    if len(tokenizer) < 2:  # transformers makes an empty tokenizer for a known model_type without its files
        raise ValueError(f"cannot load the tokenizer of {model_dir}: it has no tokenizer files "
                         "(tokenizer.json, tokenizer.model or vocab.json)")
    return tokenizer


def eos_token_ids(model_dir: str | Path, tokenizer) -> frozenset[int]:
    """EOS ids from generation_config.json (int or list) plus the tokenizer's own."""
    ids = set()
    path = Path(model_dir) / "generation_config.json"
    if path.is_file():
        value = json.loads(path.read_text()).get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return frozenset(ids)


def max_token_chars(tokenizer) -> int:
    """The most characters one token can stand for: its longest vocabulary entry (a byte-level entry has a
    character per byte, and a character is at least one byte), so a text of more than max_model_len times
    this many characters is longer than the context without tokenizing it."""
    return max(map(len, tokenizer.get_vocab()), default=1)


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                chat_template_kwargs: dict | None = None, tools: list | None = None,
                timeout: float = RENDER_TIMEOUT) -> str:
    """The chat template applied, given at most `timeout` seconds (a template is a program: it may loop)."""
    kwargs = chat_template_kwargs or {}
    if not (kwargs.get("chat_template") or getattr(tokenizer, "chat_template", None)):
        raise ChatTemplateError("this model's tokenizer has no chat template; use completions instead")
    try:
        with Deadline(timeout):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                 tools=tools, **kwargs)
    except RenderTimeout:
        raise
    except Exception as e:
        raise ChatTemplateError(f"cannot apply the chat template: {e}") from e


class Deadline:
    """Raises RenderTimeout in the Jinja code this thread runs once `timeout` seconds have passed: a trace
    hook on the lines of compiled templates and of jinja2 itself, where every loop of a template runs."""

    def __init__(self, timeout: float):
        self.timeout = timeout

    def __enter__(self):
        self.end, self.expired, self.previous = time.monotonic() + self.timeout, False, sys.gettrace()
        sys.settrace(self._call)

    def __exit__(self, *exc):
        sys.settrace(self.previous)

    def _call(self, frame, event, arg):
        name = frame.f_code.co_filename
        if not self.expired and (name == "<template>" or "jinja2" in name):
            return self._line
        return None

    def _line(self, frame, event, arg):
        if self.expired:
            return None
        if time.monotonic() > self.end:
            self.expired = True
            raise RenderTimeout(f"rendering the chat template took more than {self.timeout:g} s; refused")
        return self._line
