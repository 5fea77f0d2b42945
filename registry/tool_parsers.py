"""Tool-call parser names -> "module:Class", imported only on use, and which parser a model's output uses.

A plugin registers a parser, and optionally the models that write its format:

    register("llama3_json", "corral.tool_parsers.llama3_json:Llama3JsonToolParser",
             architectures=["LlamaForCausalLM"], chat_template_contains=["<|python_tag|>", "ipython"])

`for_model` takes the first registration whose architectures include the model's and, when it names
chat-template markers, whose markers the model's chat template contains (third-party plugins first,
as for every conflict). The generic `json` parser is core's and always there; a plugin may replace it.
"""
import importlib
from dataclasses import dataclass

from corral.registry.conflicts import Registration, pick_winners


class UnknownToolParserError(ValueError):
    pass


@dataclass(slots=True, frozen=True)
class ToolParserTarget:
    target: str  # "module:Class"
    architectures: tuple[str, ...] = ()
    chat_template_contains: tuple[str, ...] = ()  # any one of these, when given

    def __post_init__(self):
        for name in ("architectures", "chat_template_contains"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{name} takes a list of strings, not {value!r}")
            object.__setattr__(self, name, tuple(value))

    def fits(self, architectures: list[str], chat_template: str | None) -> bool:
        return bool(set(self.architectures) & set(architectures)) and (
            not self.chat_template_contains or any(m in (chat_template or "") for m in self.chat_template_contains))


GENERIC = Registration("json", ToolParserTarget("corral.tool_parsers.generic:JsonToolParser"), "corral", True)


class ToolParserRegistry:
    def __init__(self, registrations: list[Registration]):
        registrations = [GENERIC] + registrations
        winners, self.conflicts = pick_winners(registrations)
        self.targets = {k: r.value.target for k, r in winners.items()}
        self.owners = {k: r.plugin for k, r in winners.items()}
        # which parser a model uses: every plugin's say, third-party first
        self.uses = [(r.key, r.value) for r in sorted(registrations, key=lambda r: (r.builtin, r.plugin))]

    def names(self) -> list[str]:
        return sorted(self.targets)

    def resolve(self, name: str):
        if name not in self.targets:
            raise UnknownToolParserError(f"unknown tool parser {name!r}; known: {', '.join(self.names())}")
        target = self.targets[name]
        module_name, _, class_name = target.partition(":")
        try:
            return getattr(importlib.import_module(module_name), class_name)
        except Exception as e:  # the plugin's parser module is missing or broken
            raise UnknownToolParserError(f"plugin {self.owners[name]} registered tool parser {name!r} as {target}, "
                                         f"but importing it failed: {type(e).__name__}: {e}") from e

    def for_model(self, architectures: list[str] | None, override: str | None = None,
                  chat_template: str | None = None):
        """The parser class for a model: `override` (a parser name) if given, else the one registered for
        its architecture and chat template; None when the model has no tool-call format of its own."""
        if override:
            return self.resolve(override)
        for name, target in self.uses:
            if target.fits(architectures or [], chat_template):
                return self.resolve(name)
        return None
