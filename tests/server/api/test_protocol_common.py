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


def test_sampling_nonzero_penalty_is_refused():
    with pytest.raises(ValidationError, match="frequency_penalty"):
        CompletionRequest(prompt="x", frequency_penalty=0.5)


def test_sampling_stream_options_without_stream_is_refused():
    with pytest.raises(ValidationError, match="stream"):
        CompletionRequest(prompt="x", stream_options={"include_usage": True})


def test_sampling_unknown_field_is_refused():
    with pytest.raises(ValidationError, match="max_token"):
        CompletionRequest.model_validate({"prompt": "x", "max_token": 3})
