import pytest

from llmdoctor.server.api.prompts import PromptTokenizer
from llmdoctor.server.errors import ContextOverflowError, InvalidRequestError


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return PromptTokenizer(tokenizer, max_model_len=2048)


def test_prompt_text_is_encoded_without_added_special_tokens(prompts, tokenizer):
    assert prompts.encode_prompts(["Hello"]) == [tokenizer.encode("Hello", add_special_tokens=False)]


def test_prompt_token_ids_pass_through(prompts):
    assert prompts.encode_prompts([[1, 2, 3]]) == [[1, 2, 3]]


def test_prompt_token_id_outside_vocabulary_is_refused(prompts):
    with pytest.raises(InvalidRequestError, match=r"\[0, 49152\)"):
        prompts.encode_prompts([[49152]])


def test_prompt_empty_string_is_refused_naming_its_index(prompts):
    with pytest.raises(InvalidRequestError) as err:
        prompts.encode_prompts(["ok", ""])
    assert err.value.param == "prompt[1]"


def test_chat_prompt_uses_the_template_with_generation_prompt(prompts, tokenizer):
    ids = prompts.encode_chat([{"role": "user", "content": "hi"}], True, False)
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


def test_chat_prompt_can_continue_the_final_message(prompts, tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, I am"}]
    ids = prompts.encode_chat(messages, False, True)
    assert tokenizer.decode(ids).endswith("<|im_start|>assistant\nHello, I am")


def test_context_prompt_alone_too_long_names_the_prompt(prompts):
    with pytest.raises(ContextOverflowError, match="your request has 2048 input tokens") as err:
        prompts.check_context(2048, 1, "messages")
    assert err.value.param == "messages"
