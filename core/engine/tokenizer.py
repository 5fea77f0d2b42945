import json
from pathlib import Path


class ChatTemplateError(ValueError):
    pass


def load_tokenizer(model_dir: str | Path):
    from transformers import AutoTokenizer
    try:
        return AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:
        raise ValueError(f"cannot load the tokenizer of {model_dir}: {e}") from e


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


def render_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = True,
                chat_template_kwargs: dict | None = None, tools: list | None = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError("this model's tokenizer has no chat template; use completions instead")
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                                             tools=tools, **(chat_template_kwargs or {}))
    except Exception as e:
        raise ChatTemplateError(f"cannot apply the chat template: {e}") from e
