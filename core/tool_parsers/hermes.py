"""Hermes tool calls (Qwen2.5, Qwen3, Hermes): <tool_call>{"name": ..., "arguments": {...}}</tool_call>, one or more.

Text outside the blocks is content, less the whitespace next to a call; a block that is not a call
(invalid JSON, no name) stays in the content as it was written.
"""
import re

from corral.tool_parsers.base import ParsedToolCalls, ToolParser, call_from_text, content_around, partial_suffix
from corral.tool_parsers.call_json import NO

START, END = "<tool_call>", "</tool_call>"
BLOCK = re.compile(re.escape(START) + r"(.*?)(?:" + re.escape(END) + r"|\Z)", re.DOTALL)


class HermesToolParser(ToolParser):
    def __init__(self, tools: list[dict] | None = None):
        super().__init__(tools)
        self._state = "text"
        self._held = ""  # content whitespace that a call may still swallow
        self._after_call = False

    def parse(self, text: str) -> ParsedToolCalls:
        items, pos = [], 0
        for m in BLOCK.finditer(text):
            call = call_from_text(m.group(1))
            items += [text[pos:m.start()], call or m.group(0)]
            pos = m.end()
        items.append(text[pos:])
        return ParsedToolCalls(content_around(items), [i for i in items if not isinstance(i, str)])

    def _text(self, text: str):
        """Content, holding back trailing whitespace (dropped if a call follows) and, after a call,
        dropping leading whitespace."""
        if self._after_call:
            text = text.lstrip()
            if not text:
                return
            self._after_call = False
        text = self._held + text
        kept = text.rstrip()
        self._held = text[len(kept):]
        self._content(kept)

    def _call_done(self):
        self._held, self._after_call, self._state = "", True, "text"

    def _step(self, final: bool) -> bool:
        buf = self._buf
        if self._state == "text":
            i = buf.find(START)
            if i < 0:
                keep = 0 if final else partial_suffix(buf, START)
                self._text(buf[:len(buf) - keep])
                self._buf = buf[len(buf) - keep:]
                if final:
                    self._content(self._held)
                    self._held = ""
                return False
            self._text(buf[:i])
            self._buf, self._state = buf[i + len(START):], "head"
            return True
        if self._state == "head":
            state = self._head(final)
            if state is None:
                return False
            if state == NO:
                self._state = "block"
            else:
                self._held, self._state = "", "args"
            return True
        if self._state == "block":  # not the call head: read to the end tag, then judge
            i = buf.find(END)
            if i < 0 and not final:
                return False
            inner = buf if i < 0 else buf[:i]
            call = call_from_text(inner)
            if call:
                self._whole_call(call.name, call.arguments)
                self._call_done()
            else:
                self._text(START + inner + ("" if i < 0 else END))
                self._state = "text"
            self._buf = "" if i < 0 else buf[i + len(END):]
            return True
        if self._state == "args":
            if self._stream_arguments():
                self._state = "tail"
                return True
            return False
        # tail: the rest of the block after the arguments
        i = buf.find(END)
        if i >= 0:
            self._buf = buf[i + len(END):]
            self._call_done()
            return True
        self._buf = "" if final else buf[len(buf) - partial_suffix(buf, END):]
        return False
