"""Qwen3-style reasoning: text between <think> and </think> goes to `reasoning_content`.

The model emits `<think>` itself, or the chat template already put it at the end of the prompt (then
the output starts inside the reasoning and only `</think>` shows). Whitespace after `</think>` is
dropped, so content starts with its first word.
"""
START, END = "<think>", "</think>"


def prompt_opens_reasoning(prompt: str) -> bool:
    """The prompt ends inside an unclosed <think> block."""
    tail = prompt.rstrip()
    return tail.endswith(START) or (tail.rfind(START) > tail.rfind(END))


def split_reasoning(text: str, in_reasoning: bool = False) -> tuple[str | None, str | None]:
    """(reasoning_content, content) of a whole output."""
    parser = ReasoningParser(in_reasoning)
    reasoning, content = parser.feed(text)
    more_reasoning, more_content = parser.flush()
    reasoning, content = reasoning + more_reasoning, content + more_content
    if parser.seen_reasoning:
        return reasoning, content or None
    return None, content


class ReasoningParser:
    """Splits streamed text into (reasoning, content) deltas, holding back any tail that may be the
    start of a tag until the next delta decides it."""

    def __init__(self, in_reasoning: bool = False):
        self.state = "reasoning" if in_reasoning else "start"
        self.seen_reasoning = in_reasoning
        self.buffer = ""

    def feed(self, delta: str) -> tuple[str, str]:
        self.buffer += delta
        reasoning, content = "", ""
        while True:
            if self.state == "start":
                stripped = self.buffer.lstrip()
                if stripped.startswith(START):
                    self.state, self.seen_reasoning = "reasoning", True
                    self.buffer = stripped[len(START):]
                    continue
                if START.startswith(stripped):  # empty, or a prefix of <think>
                    return reasoning, content
                self.state = "content"
                continue
            if self.state == "reasoning":
                i = self.buffer.find(END)
                if i >= 0:
                    reasoning += self.buffer[:i]
                    self.buffer = self.buffer[i + len(END):]
                    self.state = "after"
                    continue
                keep = _partial_suffix(self.buffer, END)
                reasoning += self.buffer[:len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return reasoning, content
            if self.state == "after":
                self.buffer = self.buffer.lstrip()
                if not self.buffer:
                    return reasoning, content
                self.state = "content"
                continue
            content += self.buffer
            self.buffer = ""
            return reasoning, content

    def flush(self) -> tuple[str, str]:
        """What is held back, at the end of the output."""
        text, self.buffer = self.buffer, ""
        if self.state == "reasoning":
            return text, ""
        if self.state == "after":
            return "", ""
        return "", text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest tail of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
