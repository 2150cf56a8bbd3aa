import pytest

from llmdoctor.server.api.planning import choice_seed, plan_choices, prompt_tokens_of
from llmdoctor.server.api.prompts import PromptTokenizer
from llmdoctor.server.api.protocol_completions import CompletionRequest
from llmdoctor.server.api.serving_models import ModelsService
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.errors import ContextOverflowError, InvalidRequestError, NotFoundError


@pytest.fixture(scope="module")
def models(embedded_model):
    # Constructed, not started: names and the adapter table need no weights.
    return ModelsService(TorchEngine(embedded_model, max_batch=1, max_queue=1))


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return PromptTokenizer(tokenizer, max_model_len=64)


def plan(body, models, prompts, ids=((1, 2, 3),)):
    return plan_choices(body, [list(i) for i in ids], "prompt", "cmpl-x", models, prompts)


def test_choice_seed_of_first_choice_is_the_seed():
    assert choice_seed(1234, 0) == 1234


def test_choice_seed_differs_per_choice_and_repeats_per_call():
    seeds = [choice_seed(7, i) for i in range(4)]
    assert len(set(seeds)) == 4 and seeds == [choice_seed(7, i) for i in range(4)]


def test_choice_seed_none_stays_none():
    assert choice_seed(None, 3) is None


def test_plan_makes_one_request_per_prompt_and_choice(models, prompts):
    specs = plan(CompletionRequest(prompt="x", n=2, seed=5, max_tokens=4), models, prompts, ids=[(1, 2), (3,)])
    assert [s.index for s in specs] == [0, 1, 2, 3]
    assert [s.request.prompt_token_ids for s in specs] == [(1, 2), (1, 2), (3,), (3,)]
    assert len({s.request.request_id for s in specs}) == 4
    assert prompt_tokens_of(specs, 2) == 3


def test_plan_carries_stop_strings_to_each_choice(models, prompts):
    specs = plan(CompletionRequest(prompt="x", n=2, stop=["\n"], max_tokens=4), models, prompts)
    assert all(s.stops == ("\n",) for s in specs)


def test_plan_context_overflow_has_vllm_wording(models, prompts):
    with pytest.raises(ContextOverflowError, match="maximum context length is 64 tokens") as err:
        plan(CompletionRequest(prompt="x", max_tokens=62), models, prompts)
    assert err.value.param == "max_tokens"


def test_plan_unknown_model_lists_known_ones(models, prompts):
    with pytest.raises(NotFoundError, match="Known models: SmolLM2-135M-Instruct"):
        plan(CompletionRequest(prompt="x", model="gpt-4"), models, prompts)


def test_plan_unknown_doctor_names_the_field(models, prompts):
    body = CompletionRequest(prompt="x", guidance={"doctors": {"helpful": 1.0}})
    with pytest.raises(NotFoundError) as err:
        plan(body, models, prompts)
    assert err.value.param == "guidance.doctors[0].name"


def test_plan_stop_token_id_outside_vocabulary_is_refused(models, prompts):
    with pytest.raises(InvalidRequestError, match="stop_token_ids"):
        plan(CompletionRequest(prompt="x", stop_token_ids=[10**6]), models, prompts)
