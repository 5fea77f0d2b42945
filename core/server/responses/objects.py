"""The Responses API's objects: output items (reasoning, message, function_call), usage, the response."""
import time

from corral.sampling_params import SamplingParams
from corral.server.responses.protocol import ResponsesRequest, new_id


def output_text(text: str) -> dict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(text: str | None, status: str) -> dict:
    """An assistant message; text None: just opened (its content part comes next)."""
    return {"id": new_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [] if text is None else [output_text(text)]}


def reasoning_item(text: str | None, status: str) -> dict:
    """The model's thinking, whole, as reasoning_text (it is no summary)."""
    return {"id": new_id("rs"), "type": "reasoning", "status": status, "summary": [],
            "content": [] if text is None else [{"type": "reasoning_text", "text": text}]}


def function_call_item(call_id: str, name: str, arguments: str, status: str) -> dict:
    return {"id": new_id("fc"), "type": "function_call", "status": status, "call_id": call_id, "name": name,
            "arguments": arguments}


def output_items(message: dict, incomplete: bool) -> list[dict]:
    """The output of a chat completion's message: its reasoning, its text, its calls; an empty message when
    there is none of these. The last item is incomplete when the output was cut off."""
    items = []
    if message.get("reasoning_content") is not None:
        items.append(reasoning_item(message["reasoning_content"], "completed"))
    calls = message.get("tool_calls") or []
    if message.get("content") or not (items or calls):
        items.append(message_item(message.get("content") or "", "completed"))
    items += [function_call_item(c["id"], c["function"]["name"], c["function"]["arguments"], "completed")
              for c in calls]
    if incomplete:
        items[-1]["status"] = "incomplete"
    return items


def reasoning_text(items: list[dict]) -> str:
    return "".join(p["text"] for item in items if item["type"] == "reasoning" for p in item["content"])


def response_usage(input_tokens: int, output_tokens: int, cached_tokens: int, reasoning_tokens: int) -> dict:
    return {"input_tokens": input_tokens, "input_tokens_details": {"cached_tokens": cached_tokens},
            "output_tokens": output_tokens, "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
            "total_tokens": input_tokens + output_tokens}


def response_object(body: ResponsesRequest, response_id: str, created_at: int, model: str, params: SamplingParams,
                    status: str, output: list[dict], usage: dict | None, error: dict | None = None) -> dict:
    """The response as OpenAI documents it; the sampling values are those the generation used."""
    effort = body.reasoning.effort if body.reasoning else None
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "completed_at": int(time.time()) if status == "completed" else None, "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "model": model,
        "output": output, "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id, "reasoning": {"effort": effort, "summary": None},
        "store": body.store is not False, "temperature": params.temperature, "top_p": params.top_p,
        "text": body.echoed_text(), "tool_choice": body.tool_choice or "auto", "tools": body.tools or [],
        "truncation": "disabled", "usage": usage, "user": body.user, "metadata": body.metadata or {},
    }
