"""response_format on the torch engine: outputs parse and validate against their schema, with and without
guidance; schemas xgrammar would not enforce are refused naming the keyword. The vLLM engine's counterpart
is in test_vllm_engine.py (the same tokens as here)."""

import json

import jsonschema
import pytest

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance, OutputFormat, SamplingParams
from llmdoctor.server.engine.structured_output import check_schema
from llmdoctor.server.errors import InvalidRequestError
from tests.server.engine.engine_calls import collect, make_request

PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer", "minimum": 0,
                                                                               "maximum": 120}}}
REVIEW = {"type": "object", "required": ["verdict", "stars", "tags"],
          "properties": {"verdict": {"enum": ["good", "bad", "mixed"]}, "stars": {"type": "number"},
                         "tags": {"type": "array", "items": {"type": "string", "maxLength": 12}, "maxItems": 3},
                         "recommended": {"type": "boolean"}}}
LIST = {"type": "array", "items": {"type": "integer"}, "minItems": 1, "maxItems": 5}
SCHEMAS = {"person": PERSON, "review": REVIEW, "list": LIST}
PROMPTS = {"person": "Describe a person as JSON.", "review": "Review a film as JSON.", "list": "Some numbers in JSON:"}
CHEERFUL = Guidance(doctors=(DoctorWeight("cheerful", 1.5),))


def schema_format(schema: dict) -> OutputFormat:
    return OutputFormat("json_schema", check_schema(schema))


GREEDY, SEEDED = {"temperature": 0.0}, {"temperature": 1.0, "seed": 11}


@pytest.mark.parametrize("name, guidance, sampling", [
    *((name, guidance, GREEDY) for name in sorted(SCHEMAS) for guidance in (Guidance(), CHEERFUL)),
    ("review", Guidance(), SEEDED),  # drew a masked token before the sampler's noise was capped below 1
    ("person", CHEERFUL, SEEDED),
], ids=lambda v: v if isinstance(v, str) else ("guided" if v == CHEERFUL else "unguided" if v == Guidance()
                                                else "greedy" if v == GREEDY else "seeded"))
async def test_outputs_parse_and_validate_against_their_schema(engine, tokenizer, name, guidance, sampling):
    request = make_request(tokenizer, PROMPTS[name], guidance, max_tokens=160, output_format=schema_format(
        SCHEMAS[name]), **sampling)
    tokens, _, last = await collect(engine, request)
    assert last.finish_reason == "stop", tokenizer.decode(tokens)  # ended by the grammar, not cut
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    jsonschema.validate(json.loads(text), SCHEMAS[name])


async def test_json_object_outputs_a_json_object(engine, tokenizer):
    request = make_request(tokenizer, "Reply in JSON.", CHEERFUL, max_tokens=160, temperature=1.0, seed=3,
                           output_format=OutputFormat("json_object"))
    tokens, _, last = await collect(engine, request)
    if last.finish_reason == "stop":
        assert isinstance(json.loads(tokenizer.decode(tokens, skip_special_tokens=True)), dict)
    else:  # cut by max_tokens: a prefix of an object
        assert last.finish_reason == "length" and tokenizer.decode(tokens).lstrip().startswith("{")


async def test_guidance_still_steers_inside_the_schema(engine, tokenizer):
    fmt = schema_format(PERSON)
    sampling = {"max_tokens": 80, "temperature": 1.0, "seed": 5, "output_format": fmt}  # the same draws' noise
    plain, _, _ = await collect(engine, make_request(tokenizer, PROMPTS["person"], **sampling))
    guided, _, _ = await collect(engine, make_request(tokenizer, PROMPTS["person"], Guidance(
        doctors=(DoctorWeight("cheerful", 3.0),)), **sampling))
    assert plain != guided
    for tokens in (plain, guided):
        jsonschema.validate(json.loads(tokenizer.decode(tokens, skip_special_tokens=True)), PERSON)


async def test_a_grammar_cut_by_max_tokens_says_length(engine, tokenizer):
    request = make_request(tokenizer, PROMPTS["review"], max_tokens=4, output_format=schema_format(REVIEW))
    _, _, last = await collect(engine, request)
    assert last.finish_reason == "length"


@pytest.mark.parametrize("schema, named", [
    ({"type": "array", "uniqueItems": True}, "# uses uniqueItems"),
    ({"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}, "#/properties/n uses multipleOf"),
    ({"type": "string", "format": "phone"}, "format 'phone'"),
    ({"allOf": [{"type": "string"}, {"enum": ["a"]}]}, "allOf"),
    ({"type": "nonsense"}, 'Unsupported type "nonsense"'),
    ({"$ref": "#/$defs/missing"}, "missing"),
    ([1, 2], "must be a JSON Schema object"),
    (json.loads('{"type": "object", "properties": {"a": ' * 70 + '{}' + '}}' * 70), "more than 128 deep"),
])
def test_schemas_xgrammar_would_not_enforce_are_refused_naming_the_keyword(schema, named):
    with pytest.raises(InvalidRequestError) as caught:
        check_schema(schema)
    assert named in caught.value.message and caught.value.param == "response_format.json_schema.schema"


def test_min_tokens_with_response_format_is_refused():
    """Once the JSON is complete the grammar allows only EOS, which min_tokens would forbid: nothing is left."""
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams(max_tokens=30, min_tokens=30, output_format=OutputFormat("json_object"))
    assert caught.value.param == "min_tokens"
