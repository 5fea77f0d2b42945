"""A response's server-sent events, numbered in order, built from the chat path's deltas.

    response.created, response.in_progress
    per output item:  response.output_item.added
                      reasoning: response.content_part.added, response.reasoning_text.delta ..., .done,
                                 response.content_part.done
                      message:   response.content_part.added, response.output_text.delta ..., .done,
                                 response.content_part.done
                      function_call: response.function_call_arguments.delta ..., .done
                      response.output_item.done
    response.completed | response.incomplete   (error and response.failed on a failure)
"""
import json

from corral.server.responses.objects import function_call_item, message_item, output_text, reasoning_item

TEXT_EVENTS = {"message": "response.output_text", "reasoning": "response.reasoning_text"}


class ResponseEvents:
    """The events of one response and the output items they describe (`output`, once `finish`ed)."""

    def __init__(self):
        self.sequence_number = 0
        self.output: list[dict] = []
        self.open: dict | None = None  # the item being written, the last of `output`
        self.text = ""                 # the open reasoning or message item's text so far
        self.calls: dict[int, dict] = {}  # a delta's tool-call index -> its item

    def event(self, type: str, **fields) -> str:
        data = {"type": type, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return f"event: {type}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"

    def feed(self, delta: dict) -> list[str]:
        """The events of one chat delta (reasoning_content, content or tool_calls pieces)."""
        events = []
        if delta.get("reasoning_content"):
            events += self._write("reasoning", delta["reasoning_content"])
        if delta.get("content"):
            events += self._write("message", delta["content"])
        for call in delta.get("tool_calls") or []:
            events += self._call(call)
        return events

    def finish(self, incomplete: bool) -> list[str]:
        """The last item's end; an empty message when the output had nothing."""
        status = "incomplete" if incomplete else "completed"
        events = self._close(status)
        if not self.output:
            events += self._open(message_item(None, "in_progress")) + self._close(status)
        return events

    def _write(self, kind: str, text: str) -> list[str]:
        events = []
        if self.open is None or self.open["type"] != kind:
            events += self._close("completed")
            events += self._open(reasoning_item(None, "in_progress") if kind == "reasoning"
                                 else message_item(None, "in_progress"))
        self.text += text
        extra = {"logprobs": []} if kind == "message" else {}
        events.append(self.event(f"{TEXT_EVENTS[kind]}.delta", item_id=self.open["id"], output_index=self._index(),
                                 content_index=0, delta=text, **extra))
        return events

    def _call(self, call: dict) -> list[str]:
        events, function = [], call.get("function") or {}
        item = self.calls.get(call["index"])
        if item is None:
            events += self._close("completed")
            item = self.calls[call["index"]] = function_call_item(call["id"], function.get("name") or "", "",
                                                                  "in_progress")
            events += self._open(item)
        if function.get("arguments") and item is self.open:
            item["arguments"] += function["arguments"]
            events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                     output_index=self._index(), delta=function["arguments"]))
        return events

    def _open(self, item: dict) -> list[str]:
        self.output.append(item)
        self.open, self.text = item, ""
        events = [self.event("response.output_item.added", output_index=self._index(), item=item)]
        if item["type"] in TEXT_EVENTS:
            events.append(self.event("response.content_part.added", item_id=item["id"], output_index=self._index(),
                                     content_index=0, part=self._part("")))
        return events

    def _close(self, status: str) -> list[str]:
        item = self.open
        if item is None:
            return []
        events, where = [], {"item_id": item["id"], "output_index": self._index()}
        if item["type"] in TEXT_EVENTS:
            extra = {"logprobs": []} if item["type"] == "message" else {}
            events.append(self.event(f"{TEXT_EVENTS[item['type']]}.done", **where, content_index=0, text=self.text,
                                     **extra))
            item["content"] = [self._part(self.text)]
            events.append(self.event("response.content_part.done", **where, content_index=0, part=item["content"][0]))
        else:
            events.append(self.event("response.function_call_arguments.done", **where, name=item["name"],
                                     arguments=item["arguments"]))
        item["status"] = status
        events.append(self.event("response.output_item.done", output_index=where["output_index"], item=item))
        self.open = None
        return events

    def _part(self, text: str) -> dict:
        return output_text(text) if self.open["type"] == "message" else {"type": "reasoning_text", "text": text}

    def _index(self) -> int:
        return len(self.output) - 1
