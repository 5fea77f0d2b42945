"""Tool calls for models with no format of their own: the system prompt asks for a JSON object
{"name": ..., "arguments": {...}} or a list of them (`generic_tool_prompt`); a ```json fence is accepted.

An output that does not start with a call is content, all of it; text after the calls is content too.
"""
import json

from corral.tool_parsers.base import ParsedToolCalls, ToolParser, read_calls
from corral.tool_parsers.call_json import MORE, OK, match_call_head, skip_ws

FENCE, FENCE_LANG = "```", "```json"


def generic_tool_prompt(tools: list[dict]) -> str:
    """The instruction to add to the system prompt when the model has no tool-call format of its own."""
    functions = [t.get("function", t) for t in tools]
    listing = "\n".join(json.dumps({k: f[k] for k in ("name", "description", "parameters") if k in f},
                                   ensure_ascii=False) for f in functions)
    return ("You can call these tools (parameters are JSON Schema):\n"
            f"{listing}\n\n"
            "To call a tool, reply with only a JSON object, no other text: "
            '{"name": "<tool name>", "arguments": {<argument name>: <value>, ...}}. '
            "To call several tools, reply with a JSON list of such objects. "
            "If no tool is needed, answer normally.")


class JsonToolParser(ToolParser):
    def __init__(self, tools: list[dict] | None = None):
        super().__init__(tools)
        self._fenced = self._list = False

    def parse(self, text: str) -> ParsedToolCalls:
        i, fenced = skip_ws(text, 0), False
        if text.startswith(FENCE, i):
            fenced, i = True, i + len(FENCE_LANG if text.startswith(FENCE_LANG, i) else FENCE)
        i = skip_ws(text, i)
        is_list = text.startswith("[", i)
        calls, pos = read_calls(text, i + is_list, ",", many=is_list)
        if not calls:
            return ParsedToolCalls(text or None, [])
        for closing, used in (("]", is_list), (FENCE, fenced)):
            j = skip_ws(text, pos)
            if used and text.startswith(closing, j):
                pos = j + len(closing)
        return ParsedToolCalls(text[pos:].lstrip() or None, calls)

    def _step(self, final: bool) -> bool:
        buf, state = self._buf, self._state
        if state == "start":
            s = buf.lstrip()
            if not final and (FENCE_LANG.startswith(s) or s.startswith(FENCE) and not s[3:].strip()):
                return False  # an opening fence may be arriving
            body = s
            if s.startswith(FENCE):
                self._fenced, body = True, s[len(FENCE_LANG if s.startswith(FENCE_LANG) else FENCE):]
            body = body.lstrip()
            if not final and not body[:1]:
                return False
            if body.startswith("["):
                self._list, body = True, body[1:]
            return self._call_at(buf, body, final)
        if state == "after":
            s = buf.lstrip()
            if self._list and s.startswith(","):
                return self._call_at(s, s[1:], final)
            for closing in [c for c, used in (("]", self._list), (FENCE, self._fenced)) if used]:
                if not final and closing.startswith(s):
                    return False  # it may be arriving
                if s.startswith(closing):
                    s = s[len(closing):].lstrip()
            if not s and not final:
                return False
            self._buf, self._state = s, "text"
            return True
        if state == "object":
            return self._read_whole_object(final, self._lead + buf)
        if state == "args":
            return self._read_arguments()
        if state == "tail":
            return self._read_tail()
        self._content(buf)  # text
        self._buf = ""
        return False

    def _call_at(self, raw: str, body: str, final: bool) -> bool:
        """`body` (the end of `raw`) should start with a call: stream it, read it whole, or give up
        and make `raw` content."""
        status = match_call_head(body)[0]
        if status == MORE and not final:
            return False
        if status == OK:
            self._buf = body
            self._head(final)
            self._state = "args"
        elif body.lstrip().startswith("{"):
            self._lead, self._buf, self._state = raw[:len(raw) - len(body)], body, "object"
            self._begin_object()
        else:
            self._buf, self._state = raw, "text"
        return True
