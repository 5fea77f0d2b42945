"""The JSON of one tool call, `{"name": "f", "arguments": {...}}` ("parameters" too), read whole or as it arrives."""
import json
from dataclasses import dataclass

MORE, NO, OK = "more", "no", "ok"
ARGUMENT_KEYS = ('"arguments"', '"parameters"')
WHITESPACE = " \t\r\n"


def call_from_json(obj) -> tuple[str, str] | None:
    """(name, arguments as JSON text) when `obj` is a call, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    arguments = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(arguments, str):  # some models send the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return obj["name"], json.dumps(arguments, ensure_ascii=False)


def skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in WHITESPACE:
        i += 1
    return i


def match_call_head(text: str) -> tuple[str, str | None, int]:
    """Whether `text` starts with a call's head, `{"name": "<name>", "arguments": {`, optionally after
    whitespace: (OK, name, i) with text[i] the arguments' "{"; (MORE, None, 0) while it may; (NO, None, 0)
    once it cannot (another key order, arguments that are not an object, not JSON: read it whole)."""
    i = 0
    for token in ("{", '"name"', ":", None, ",", ARGUMENT_KEYS, ":", "{"):
        i = skip_ws(text, i)
        if i == len(text):
            return MORE, None, 0
        if token is None:  # the name, a JSON string
            if text[i] != '"':
                return NO, None, 0
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if j >= len(text):
                return MORE, None, 0
            try:
                name = json.loads(text[i:j + 1])
            except ValueError:
                return NO, None, 0
            i = j + 1
            continue
        options = token if isinstance(token, tuple) else (token,)
        seen = text[i:i + max(map(len, options))]
        full = [t for t in options if seen.startswith(t)]
        if full:
            i += len(full[0])
        elif any(t.startswith(seen) for t in options):
            return MORE, None, 0
        else:
            return NO, None, 0
    return OK, name, i - 1


@dataclass(slots=True)
class JsonDepth:
    """Follows JSON text, piece by piece, to where the value that opens it closes."""
    depth: int = 0
    in_string: bool = False
    escape: bool = False

    def close(self, text: str) -> int | None:
        """Index in `text` just past the closing bracket, or None when the value goes on."""
        for i, c in enumerate(text):
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return None
