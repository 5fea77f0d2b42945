from corral.sampling_params import SamplingParams


class IncrementalDetokenizer:
    """Turns one request's output token ids into text as they arrive, and applies its stop strings.

    Decoding works on a small window of ids (vLLM's prefix/read offsets): `ids[:read]` are tokens
    already turned into text that the new ones may still merge with, `ids[read:]` are the new ones.
    Text is taken only once the window decodes longer than its prefix and does not end in U+FFFD, so
    a multi-byte character split over tokens comes out whole (one the output ends inside is dropped).
    The first window holds the tail of the
    prompt, so the output reads as `decode(prompt + output)` minus `decode(prompt)`: a SentencePiece
    decoder then keeps the leading space of the first output word, as in the full decode.

        window:  | prefix: already text | new ids |
                 ^ ids[0]               ^ read
    """

    PROMPT_CONTEXT = 6

    __slots__ = ("_tokenizer", "_skip_special", "_stops", "_include_stop", "_min_tokens", "_num_tokens",
                 "_ids", "_read", "_prefix_text", "_text", "_sent", "_stopped")

    def __init__(self, tokenizer, prompt_token_ids: list[int], params: SamplingParams):
        # the `tokenizers.Tokenizer` behind a transformers fast tokenizer
        self._tokenizer = getattr(tokenizer, "backend_tokenizer", tokenizer)
        self._skip_special = params.skip_special_tokens
        self._stops = list(params.stop)
        self._include_stop = params.include_stop_str_in_output
        self._min_tokens = params.min_tokens
        self._num_tokens = 0
        self._ids = list(prompt_token_ids[-self.PROMPT_CONTEXT:])
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        self._text = ""
        self._sent = 0
        self._stopped = False

    @property
    def output_text(self) -> str:
        return self._text

    def take(self, new_token_ids: list[int]) -> tuple[int, str | None]:
        """How many of new_token_ids the output keeps, and the stop string it then ends at. Several
        ids at once (a multi-step decode group) meet the stop strings one id at a time, as single
        steps do: the output ends with the id that completes one."""
        if len(new_token_ids) == 1 or not self._stops:
            return len(new_token_ids), self.update(new_token_ids)
        for i, token_id in enumerate(new_token_ids):
            if (stop := self.update([token_id])) is not None:
                return i + 1, stop
        return len(new_token_ids), None

    def update(self, new_token_ids: list[int]) -> str | None:
        """Decodes the new tokens; returns the stop string the output now ends at, if any."""
        self._num_tokens += len(new_token_ids)
        self._ids.extend(new_token_ids)
        text = self._decode(self._ids)
        if len(text) <= len(self._prefix_text) or text.endswith("\ufffd"):
            return None
        return self._append(self._advance(text))

    def flush(self) -> str | None:
        """The output ended: take the text still held back, less a character its last tokens left
        incomplete (the full decode shows that as U+FFFD; a reply never ends in a broken
        character). Returns the stop string the output now ends at, if any."""
        if not self._stopped and self._read < len(self._ids):
            return self._append(self._advance(self._decode(self._ids)).rstrip("\ufffd"))
        return None

    def get_delta(self, finished: bool) -> str:
        """Text not returned before; while not finished, holds back what may begin a stop string."""
        if finished:
            self.flush()
        end = len(self._text)
        if not finished and not self._include_stop:
            end -= self._partial_stop_len()
        delta = self._text[self._sent:max(end, self._sent)]
        self._sent += len(delta)
        return delta

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=self._skip_special)

    def _advance(self, text: str) -> str:
        new_text = text[len(self._prefix_text):]
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        self._prefix_text = self._decode(self._ids)
        return new_text

    def _append(self, new_text: str) -> str | None:
        """A stop string counts where it ends in the new text, once min_tokens are out (vLLM)."""
        checked = len(self._text)
        self._text += new_text
        if self._num_tokens <= self._min_tokens:
            return None
        hits = [(i, stop) for stop in self._stops
                if (i := self._text.find(stop, max(0, checked - len(stop) + 1))) >= 0]
        if not hits:
            return None
        i, stop = min(hits, key=lambda hit: hit[0])
        self._text = self._text[:i + len(stop) if self._include_stop else i]
        self._stopped = True
        return stop

    def _partial_stop_len(self) -> int:
        text = self._text
        return max((k for stop in self._stops for k in range(1, len(stop)) if text.endswith(stop[:k])),
                   default=0)
