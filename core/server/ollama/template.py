"""The part of Ollama's prompt templates (Go's text/template) that /api/generate's `template` uses: the
variables .System, .Prompt and .Response, `if`/`else`/`end` on them, and `{{-`/`-}}` trimming. Anything
else (range over .Messages, functions) is refused by name rather than rendered wrong."""
import re

from corral.server.errors import BadRequestError

ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.DOTALL)
VARIABLES = ("System", "Prompt", "Response")


def render_template(template: str, values: dict[str, str]) -> str:
    """`template` with `values` (System, Prompt, Response; missing ones are empty)."""
    tree, rest = _parse(_tokens(template), 0, top=True)
    return _render(tree, values)


def _tokens(template: str) -> list[tuple[str, str]]:
    """("text", text) and ("action", words) in order, whitespace trimmed where an action asks for it."""
    out, pos, trim_next = [], 0, False
    for m in ACTION.finditer(template):
        text = template[pos:m.start()]
        if trim_next:
            text = text.lstrip()
        if m.group(1):
            text = text.rstrip()
        out += [("text", text), ("action", m.group(2))]
        pos, trim_next = m.end(), bool(m.group(3))
    text = template[pos:]
    out.append(("text", text.lstrip() if trim_next else text))
    return out


def _parse(tokens, i: int, top: bool = False):
    """Nodes from tokens[i] up to the `else` or `end` that closes them: (nodes, index of that token)."""
    nodes = []
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "text":
            nodes.append(value)
        elif value in ("else", "end"):
            if top:
                raise _unsupported(f"an unmatched {{{{ {value} }}}}")
            return nodes, i
        elif value.startswith("if "):
            variable = _variable(value[3:].strip())
            then, i = _parse(tokens, i + 1)
            otherwise = []
            if tokens[i][1] == "else":
                otherwise, i = _parse(tokens, i + 1)
                if tokens[i][1] != "end":
                    raise _unsupported("an {{ if }} with two {{ else }}")
            nodes.append(("if", variable, then, otherwise))
        else:
            nodes.append(("var", _variable(value)))
        i += 1
    if not top:
        raise _unsupported("an {{ if }} without its {{ end }}")
    return nodes, i


def _variable(words: str) -> str:
    if words.startswith(".") and words[1:] in VARIABLES:
        return words[1:]
    raise _unsupported(f"{{{{ {words} }}}}")


def _render(nodes, values: dict[str, str]) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif node[0] == "var":
            out.append(values.get(node[1]) or "")
        else:
            _, variable, then, otherwise = node
            out.append(_render(then if values.get(variable) else otherwise, values))
    return "".join(out)


def _unsupported(what: str) -> BadRequestError:
    return BadRequestError(f"template: {what} is not supported; corral renders .System, .Prompt and .Response, "
                           "with if/else/end on them", param="template")
