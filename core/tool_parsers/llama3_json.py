"""Llama 3.1 / 3.2 / 3.3 JSON tool calls: [<|python_tag|>]{"name": "f", "parameters": {...}}; {...}.

An output that does not start with a call is content, all of it. Text after the calls (other than
`; <call>`) is content too.
"""

from corral.tool_parsers.base import ParsedToolCalls, ToolParser, read_calls
from corral.tool_parsers.call_json import MORE, NO, OK, match_call_head

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    def parse(self, text: str) -> ParsedToolCalls:
        calls, pos = read_calls(text, 0, ";", lead=PYTHON_TAG)
        if not calls:
            return ParsedToolCalls(text or None, [])
        return ParsedToolCalls(text[pos:].lstrip() or None, calls)

    def _step(self, final: bool) -> bool:
        buf = self._buf
        if self._state in ("start", "after"):  # before the first call, or after one
            s = buf.lstrip()
            lead = PYTHON_TAG if self._state == "start" else ";"
            if not final and len(s) < len(lead) and lead.startswith(s):
                return False
            if self._state == "after" and not s:  # final: nothing after the calls
                return False
            body = s[len(lead):] if s.startswith(lead) else s if self._state == "start" else None
            status = match_call_head(body)[0] if body is not None else NO
            if status == MORE and not final:
                return False
            if status == OK:
                self._buf = body
                self._head(final)
                self._state = "args"
            elif body is not None and body.lstrip().startswith("{"):
                self._lead, self._buf = buf[:len(buf) - len(body)], body
                self._begin_object()
                self._state = "object"
            else:
                self._buf, self._state = buf if self._state == "start" else s, "text"
            return True
        if self._state == "object":
            text = self._lead + buf
            return self._read_whole_object(final, text if self._index == 0 else text.lstrip())
        if self._state == "args":
            return self._read_arguments()
        if self._state == "tail":
            return self._read_tail()
        self._content(buf)  # text
        self._buf = ""
        return False
