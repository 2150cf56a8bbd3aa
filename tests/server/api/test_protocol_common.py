import pytest
from pydantic import ValidationError

from llmdoctor.server.api.protocol_common import GuidanceSchema
from llmdoctor.server.api.protocol_completions import CompletionRequest
from llmdoctor.server.engine.protocol import DoctorWeight, Guidance


def test_guidance_list_form_converts_to_engine_guidance():
    schema = GuidanceSchema.model_validate({"alpha": 0.5, "doctors": [{"name": "helpful", "beta": 0.8}]})
    assert schema.to_guidance() == Guidance(0.5, (DoctorWeight("helpful", 0.8),))


def test_guidance_mapping_form_equals_list_form():
    mapping = GuidanceSchema.model_validate({"doctors": {"helpful": 0.8, "concise": 0.3}})
    listed = GuidanceSchema.model_validate(
        {"doctors": [{"name": "helpful", "beta": 0.8}, {"name": "concise", "beta": 0.3}]}
    )
    assert mapping.to_guidance() == listed.to_guidance()


@pytest.mark.parametrize("beta", [float("nan"), float("inf"), float("-inf")])
def test_guidance_non_finite_beta_is_refused_naming_the_field(beta):
    with pytest.raises(ValidationError) as err:
        GuidanceSchema.model_validate({"doctors": [{"name": "helpful", "beta": beta}]})
    assert err.value.errors()[0]["loc"] == ("doctors", 0, "beta")


def test_guidance_non_finite_alpha_is_refused():
    with pytest.raises(ValidationError):
        GuidanceSchema.model_validate({"alpha": float("nan")})


def test_sampling_single_stop_string_becomes_a_list():
    assert CompletionRequest(prompt="x", stop="\n").stop == ["\n"]


def test_sampling_stop_of_wrong_type_is_refused():
    with pytest.raises(ValidationError, match="string or a list of strings"):
        CompletionRequest(prompt="x", stop=3)


@pytest.mark.parametrize("field, value", [("frequency_penalty", 2.5), ("presence_penalty", -2.5),
                                          ("repetition_penalty", 0), ("min_p", 1.5), ("min_tokens", -1),
                                          ("logit_bias", {"fifty": 1.0}), ("logit_bias", {"5": 101.0})])
def test_sampling_parameters_out_of_range_name_the_field(field, value):
    with pytest.raises(ValidationError, match=field):
        CompletionRequest(prompt="x", **{field: value})


def test_sampling_parameters_reach_the_engine():
    params = CompletionRequest(prompt="x", frequency_penalty=0.5, presence_penalty=-0.5, repetition_penalty=1.2,
                               min_p=0.1, min_tokens=3, logit_bias={"50": -100, "7": 2.5}).to_sampling_params(8)
    assert (params.frequency_penalty, params.presence_penalty, params.repetition_penalty) == (0.5, -0.5, 1.2)
    assert (params.min_p, params.min_tokens, dict(params.logit_bias)) == (0.1, 3, {50: -100.0, 7: 2.5})


def test_sampling_stream_options_without_stream_is_refused():
    with pytest.raises(ValidationError, match="stream"):
        CompletionRequest(prompt="x", stream_options={"include_usage": True})


def test_sampling_unknown_field_is_refused():
    with pytest.raises(ValidationError, match="max_token"):
        CompletionRequest.model_validate({"prompt": "x", "max_token": 3})
