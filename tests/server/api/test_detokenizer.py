import pytest

from llmdoctor.server.api.detokenizer import IncrementalDetokenizer, TokenTexts

TEXTS = [
    "Hello, world! The capital of France is Paris.",
    "Ünïcödé, 日本語のテキスト, emoji 🙂🚀 and Ελληνικά.",
    "  leading spaces,\ttabs\nand\n\nnew lines  ",
    "code: def f(x):\n    return x ** 2  # 🙂",
]


def stream(tokenizer, ids, prompt=()):
    detok = IncrementalDetokenizer(tokenizer, prompt)
    return [detok.add(i) for i in ids], detok


@pytest.mark.parametrize("text", TEXTS)
def test_detokenizer_pieces_join_to_full_decode(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces, _ = stream(tokenizer, ids)
    assert "".join(pieces) == tokenizer.decode(ids)


def test_detokenizer_multibyte_character_waits_for_its_last_byte(tokenizer):
    ids = tokenizer.encode("🙂", add_special_tokens=False)
    assert len(ids) > 1  # the emoji is split over byte tokens
    pieces, _ = stream(tokenizer, ids)
    assert pieces[:-1] == [""] * (len(ids) - 1) and pieces[-1] == "🙂"


def test_detokenizer_special_tokens_are_skipped(tokenizer):
    ids = tokenizer.encode("Hi there", add_special_tokens=False) + [tokenizer.eos_token_id]
    pieces, _ = stream(tokenizer, ids)
    assert "".join(pieces) == "Hi there"


def test_detokenizer_prompt_context_keeps_first_token_spacing(tokenizer):
    prompt = tokenizer.encode("The capital of France is", add_special_tokens=False)
    output = tokenizer.encode(" Paris", add_special_tokens=False)
    pieces, _ = stream(tokenizer, output, prompt)
    assert "".join(pieces) == " Paris"


def test_detokenizer_window_stays_small_on_long_outputs(tokenizer):
    ids = tokenizer.encode(" ".join(TEXTS) * 40, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer)
    windows = []
    for i in ids:
        detok.add(i)
        windows.append(detok.window)
    assert len(ids) > 2000 and max(windows) <= 8  # O(new tokens): no re-decoding of the output


def test_token_texts_keep_special_tokens_visible(tokenizer):
    texts = TokenTexts(tokenizer)
    assert texts(tokenizer.eos_token_id) == "<|im_end|>"
    assert texts(tokenizer.encode(" Paris", add_special_tokens=False)[0]) == " Paris"
