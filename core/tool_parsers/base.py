"""What a tool parser returns, and the streaming machinery the formats share."""
import json
import secrets
from dataclasses import dataclass, field

from corral.tool_parsers.call_json import MORE, NO, JsonDepth, call_from_json, match_call_head, skip_ws


def new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass(slots=True)
class ToolCall:
    name: str
    arguments: str  # a JSON object, as text
    id: str = field(default_factory=new_call_id)

    def to_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class ParsedToolCalls:
    content: str | None
    tool_calls: list[ToolCall]


@dataclass(slots=True)
class DeltaToolCall:
    """One call's first delta (id and name set, arguments "") or a piece of its arguments (id None)."""
    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None

    def to_openai(self) -> dict:
        if self.id is None:
            return {"index": self.index, "function": {"arguments": self.arguments}}
        return {"index": self.index, "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class DeltaMessage:
    """Content text, or tool-call deltas; never both."""
    content: str | None = None
    tool_calls: list[DeltaToolCall] = field(default_factory=list)

    def to_openai(self) -> dict:
        if self.tool_calls:
            return {"tool_calls": [t.to_openai() for t in self.tool_calls]}
        return {"content": self.content}


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that `tag` starts with (a tag that may be arriving)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ToolParser:
    """One per request: `parse(text)` for a whole output, or `feed(delta_text)`... `finish()` for a stream.

    Subclasses implement `parse` and `_step(final) -> bool` (consume from `self._buf`, emit through
    `_content` / `_start_call` / `_arguments`; True while progress was made)."""

    def __init__(self, tools: list[dict] | None = None):
        self.tools = tools or []
        self._buf = ""
        self._out: list[DeltaMessage] = []
        self._index = 0  # calls started so far
        self._depth = JsonDepth()
        self._scanned = 0
        self._state = "start"

    def parse(self, text: str) -> ParsedToolCalls:
        raise NotImplementedError

    def feed(self, delta_text: str) -> list[DeltaMessage]:
        self._buf += delta_text
        while self._step(final=False):
            pass
        return self._take()

    def finish(self) -> list[DeltaMessage]:
        while self._step(final=True):
            pass
        return self._take()

    def _step(self, final: bool) -> bool:
        raise NotImplementedError

    def _take(self) -> list[DeltaMessage]:
        out, self._out = self._out, []
        return out

    def _content(self, text: str):
        if not text:
            return
        if self._out and self._out[-1].content is not None:
            self._out[-1].content += text
        else:
            self._out.append(DeltaMessage(content=text))

    def _start_call(self, name: str):
        self._out.append(DeltaMessage(tool_calls=[DeltaToolCall(self._index, "", new_call_id(), name)]))
        self._index += 1

    def _arguments(self, piece: str):
        if not piece:
            return
        last = self._out[-1].tool_calls[-1] if self._out and self._out[-1].tool_calls else None
        if last is not None and last.id is None:
            last.arguments += piece
        else:
            self._out.append(DeltaMessage(tool_calls=[DeltaToolCall(self._index - 1, piece)]))

    def _whole_call(self, name: str, arguments: str):
        self._start_call(name)
        self._arguments(arguments)

    # the call object {"name": ..., "arguments": {...}} at the start of the buffer
    def _head(self, final: bool) -> str | None:
        """"args" once the head went out (the buffer starts at the arguments' "{"), NO when the buffer
        does not start with a call head, None while it may still."""
        status, name, i = match_call_head(self._buf)
        if status == MORE:
            return NO if final else None
        if status == NO:
            return NO
        self._start_call(name)
        self._buf = self._buf[i:]
        self._depth = JsonDepth()
        return "args"

    def _stream_arguments(self) -> bool:
        """Send the arguments received so far; True once they closed (the buffer is past them)."""
        end = self._depth.close(self._buf)
        piece, self._buf = (self._buf, "") if end is None else (self._buf[:end], self._buf[end:])
        self._arguments(piece)
        return end is not None

    # the states the JSON formats share: "object", "args", "tail"
    def _read_whole_object(self, final: bool, not_a_call: str) -> bool:
        """A call whose head is not in the usual order, read whole once its object closes; a value that
        is no call becomes text again as `not_a_call`."""
        buf = self._buf
        end = self._scan_object(final)
        if end is None:
            return False
        call = call_from_text(buf[:end])
        if call:
            self._whole_call(call.name, call.arguments)
            self._buf, self._state = buf[end:], "after"
        else:
            self._buf, self._state = not_a_call, "text"
        return True

    def _read_arguments(self) -> bool:
        """Stream the arguments; once they close, the rest of the call object ("tail") follows."""
        if not self._stream_arguments():
            return False
        self._depth, self._state = JsonDepth(depth=1), "tail"  # inside the call object, after its arguments
        return True

    def _read_tail(self) -> bool:
        """Skip to the end of the call object."""
        end = self._depth.close(self._buf)
        self._buf = "" if end is None else self._buf[end:]
        if end is None:
            return False
        self._state = "after"
        return True

    def _begin_object(self):
        """Read the JSON value the buffer starts with whole (see `_scan_object`)."""
        self._depth, self._scanned = JsonDepth(), 0

    def _scan_object(self, final: bool) -> int | None:
        """Where the value the buffer starts with ends (scanned once, piece by piece), len(buffer)
        when the output ended first, None while it goes on."""
        end = self._depth.close(self._buf[self._scanned:])
        if end is not None:
            return self._scanned + end
        self._scanned = len(self._buf)
        return len(self._buf) if final else None


def call_from_text(text: str) -> ToolCall | None:
    try:
        found = call_from_json(json.loads(text))
    except ValueError:
        return None
    return ToolCall(*found) if found else None


def read_calls(text: str, pos: int, separator: str, lead: str = "", many: bool = True) -> tuple[list[ToolCall], int]:
    """Calls written one after another from text[pos:]: the first after an optional `lead`, each next one
    after `separator` (`many`: more than one may come). Stops at the first thing that is not a call;
    returns the calls and the index just past the last."""
    calls, decoder = [], json.JSONDecoder()
    while not calls or many:
        i = skip_ws(text, pos)
        mark = separator if calls else lead
        if mark and text.startswith(mark, i):
            i += len(mark)
        elif calls:
            break
        try:
            obj, end = decoder.raw_decode(text, skip_ws(text, i))
        except ValueError:
            break
        found = call_from_json(obj)
        if not found:
            break
        calls.append(ToolCall(*found))
        pos = end
    return calls, pos


def content_around(items: list) -> str | None:
    """Join text pieces and ToolCalls into content: whitespace next to a call is dropped."""
    merged: list = []
    for item in items:  # text pieces next to each other are one piece
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] += item
        else:
            merged.append(item)
    items, out = merged, []
    for i, item in enumerate(items):
        if isinstance(item, ToolCall):
            continue
        if i > 0 and isinstance(items[i - 1], ToolCall):
            item = item.lstrip()
        if i + 1 < len(items) and isinstance(items[i + 1], ToolCall):
            item = item.rstrip()
        out.append(item)
    return "".join(out) or None
