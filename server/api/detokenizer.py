"""Token ids -> text, incrementally, at O(new tokens) per step.

Decoding the whole output again at every token costs O(n) per token (O(n^2) per request). Instead,
as in TGI's `decode_token` and vLLM's `detokenize_incrementally`, each step decodes a short window:
the tokens since the last emitted piece (`read`) plus the piece before them (`prefix`) as context, so
that a token whose text depends on its left neighbour (SentencePiece's leading space, a UTF-8
character split over byte tokens) comes out right. The new text is the window's decode minus the
prefix's. A window ending in U+FFFD is an unfinished character: wait for the next token.
"""

from __future__ import annotations

from collections.abc import Sequence

# vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET: prompt tokens kept as left context.
PROMPT_CONTEXT_TOKENS = 5
UNFINISHED_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Feeds one token at a time; `add()` returns the text it completes (often '', never re-emitted)."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = True):
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix = 0  # start of the context window
        self._read = len(self._ids)  # tokens before this index are already emitted (or are prompt)

    def add(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if full_text.endswith(UNFINISHED_CHAR):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return full_text[len(prefix_text) :] if len(full_text) > len(prefix_text) else ""

    @property
    def window(self) -> int:
        """Tokens the next `add()` decodes; stays small whatever the output length."""
        return len(self._ids) - self._prefix + 1

    def _decode(self, ids: list[int]) -> str:
        if not ids:
            return ""
        return self._tokenizer.decode(
            ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False
        )


class TokenTexts:
    """Text of single tokens for logprobs (`tokens`, `top_logprobs` keys), cached: top-k asks often."""

    def __init__(self, tokenizer, max_entries: int = 65536):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}
        self._max = max_entries

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if len(self._cache) < self._max:
                self._cache[token_id] = text
        return text
