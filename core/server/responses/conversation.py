"""A conversation of Responses items as the chat messages the chat template renders.

    message (user, system, developer)  -> a message of that role (developer as system)
    message (assistant)                -> an assistant message
    function_call                      -> tool_calls of the assistant message just before, or of a new one
    function_call_output               -> a tool message with its call_id
    reasoning                          -> reasoning_content of the assistant message that follows it
"""
from corral.server.responses.protocol import ROLES


def chat_messages(items: list[dict], instructions: str | None) -> list[dict]:
    messages = [{"role": "system", "content": instructions}] if instructions else []
    reasoning = None  # a reasoning item's text, waiting for its assistant turn

    def assistant() -> dict:
        nonlocal reasoning
        message = {"role": "assistant", "content": ""}
        if reasoning is not None:
            message["reasoning_content"], reasoning = reasoning, None
        messages.append(message)
        return message

    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            parts = item.get("content") or item["summary"]
            reasoning = (reasoning or "") + "".join(p["text"] for p in parts)
        elif kind == "message":
            text = "\n".join(p["text"] for p in item["content"])
            if item["role"] == "assistant":
                assistant()["content"] = text
            else:
                messages.append({"role": ROLES.get(item["role"], item["role"]), "content": text})
        elif kind == "function_call":
            follows_assistant = messages and messages[-1]["role"] == "assistant" and reasoning is None
            message = messages[-1] if follows_assistant else assistant()
            message.setdefault("tool_calls", []).append(
                {"id": item["call_id"], "type": "function",
                 "function": {"name": item["name"], "arguments": item["arguments"]}})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
    return messages
