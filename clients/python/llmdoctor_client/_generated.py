"""Generated from the llmdoctor server's OpenAPI document; do not edit.

Refresh: python -m llmdoctor_client._codegen
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints
from typing_extensions import TypeAliasType


class AdapterCard(BaseModel):
    object: Annotated[Literal["adapter"], Field(title="Object")] = "adapter"
    name: Annotated[str, Field(title="Name")]
    kind: Annotated[Literal["patient", "doctor"], Field(title="Kind")]
    path: Annotated[str, Field(title="Path")]
    base_model: Annotated[str, Field(title="Base Model")]
    rank: Annotated[int, Field(title="Rank")]
    meta: Annotated[dict[str, Any] | None, Field(title="Meta")] = None


class AdapterDeleted(BaseModel):
    object: Annotated[Literal["adapter.deleted"], Field(title="Object")] = "adapter.deleted"
    name: Annotated[str, Field(title="Name")]
    deleted: Annotated[bool | None, Field(title="Deleted")] = True


class AdapterList(BaseModel):
    object: Annotated[Literal["list"], Field(title="Object")] = "list"
    data: Annotated[list[AdapterCard], Field(title="Data")]


class Seed(RootModel[int]):
    root: Annotated[int, Field(ge=-9223372036854776000, lt=18446744073709552000, title="Seed")]


class StopTokenId(RootModel[int]):
    root: Annotated[int, Field(ge=0)]


class MaxTokens(RootModel[int]):
    root: Annotated[int, Field(ge=1, title="Max Tokens")]


class MaxCompletionTokens(RootModel[int]):
    root: Annotated[int, Field(ge=1, title="Max Completion Tokens")]


class TopLogprobs(RootModel[int]):
    root: Annotated[int, Field(ge=0, le=20, title="Top Logprobs")]


class ChatMessageOut(BaseModel):
    role: Annotated[Literal["assistant"], Field(title="Role")] = "assistant"
    content: Annotated[str, Field(title="Content")]


class CompletionLogprobs(BaseModel):
    tokens: Annotated[list[str] | None, Field(title="Tokens")] = None
    token_logprobs: Annotated[list[float] | None, Field(title="Token Logprobs")] = None
    top_logprobs: Annotated[list[dict[str, float]] | None, Field(title="Top Logprobs")] = None
    text_offset: Annotated[list[int] | None, Field(title="Text Offset")] = None


class Logprobs(RootModel[int]):
    root: Annotated[int, Field(ge=0, le=20, title="Logprobs")]


class Token(RootModel[int]):
    root: Annotated[int, Field(ge=0)]


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    model: Annotated[str | None, Field(title="Model")] = None
    tokens: Annotated[list[Token], Field(max_length=1000000, title="Tokens")]


class DetokenizeResponse(BaseModel):
    prompt: Annotated[str, Field(title="Prompt")]


class DoctorWeightSchema(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(min_length=1, title="Name")]
    beta: Annotated[
        float,
        Field(
            description="the doctor's weight: 0 = off; otherwise 1e-06 <= |beta| <= 100; negative steers away from what the doctor prefers",
            ge=-100.0,
            le=100.0,
            title="Beta",
        ),
    ]
    mode: Annotated[
        Literal["product", "ratio"] | None,
        Field(
            description="product: beta * log p_doctor (the rule as written); ratio: beta * (log p_doctor - log p_patient), the doctor's tilt away from the patient it was trained on, without sharpening the patient (recommended for doctors that are LoRAs on the patient)",
            title="Mode",
        ),
    ] = "product"


class ErrorInfo(BaseModel):
    message: Annotated[str, Field(title="Message")]
    type: Annotated[
        str, Field(description="invalid_request_error, not_found_error, server_overloaded ...", title="Type")
    ]
    param: Annotated[
        str | None, Field(description="the request field at fault, e.g. guidance.doctors[0].name", title="Param")
    ] = None
    code: Annotated[
        int, Field(description="the HTTP status (mid-stream too, where no status line tells it)", title="Code")
    ]


class ErrorResponse(BaseModel):
    """
    Every error answer's body, and the JSON of an error event mid-stream.
    """

    error: ErrorInfo


class EvalRow(BaseModel):
    kl_per_token: Annotated[float, Field(title="Kl Per Token")]
    score: Annotated[float, Field(title="Score")]
    mean_tokens: Annotated[float, Field(title="Mean Tokens")]


DoctorsAdditionalProperty = TypeAliasType(
    "DoctorsAdditionalProperty",
    Annotated[
        float,
        Field(
            description="the doctor's weight: 0 = off; otherwise 1e-06 <= |beta| <= 100; negative steers away from what the doctor prefers",
            ge=-100.0,
            le=100.0,
        ),
    ],
)


class MaxKl(RootModel[float]):
    root: Annotated[
        float,
        Field(
            description="a KL budget in nats per token: on a step where the rule would move further than this from the patient, every beta (and alpha's distance from 1) is scaled down by one factor so that the step stays within it; `beta_scale` in the explanation shows the factor",
            ge=0.0,
            le=100.0,
            title="Max Kl",
        ),
    ]


class GuidanceSchema(BaseModel):
    """
    The extension field: `{"alpha": 1.0, "doctors": [{"name": "helpful", "beta": 0.8}]}`.

    `doctors` may also be a mapping `{"helpful": 0.8}`.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    alpha: Annotated[
        float | None,
        Field(
            description="the patient's weight: 0, or in [1e-06, 100]; 0 needs a doctor with a non-zero beta",
            ge=0.0,
            le=100.0,
            title="Alpha",
        ),
    ] = 1.0
    doctors: Annotated[
        list[DoctorWeightSchema] | dict[Annotated[str, StringConstraints(min_length=1)], DoctorsAdditionalProperty] | None,
        Field(title="Doctors"),
    ] = None
    explain: Annotated[
        bool | None,
        Field(
            description="add to each choice an `explanation`: per generated token, the patient's, each doctor's and the rule's log-prob of it and the rule's KL from the patient at that step (streamed too)",
            title="Explain",
        ),
    ] = False
    max_kl: Annotated[
        MaxKl | None,
        Field(
            description="a KL budget in nats per token: on a step where the rule would move further than this from the patient, every beta (and alpha's distance from 1) is scaled down by one factor so that the step stays within it; `beta_scale` in the explanation shows the factor",
            title="Max Kl",
        ),
    ] = None


class JsonSchemaFormat(BaseModel):
    """
    OpenAI's `response_format.json_schema`.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[str, Field(max_length=64, min_length=1, pattern="^[A-Za-z0-9_-]+$", title="Name")]
    description: Annotated[str | None, Field(title="Description")] = None
    schema_: Annotated[
        dict[str, Any] | None, Field(alias="schema", description="the JSON Schema the output follows", title="Schema")
    ] = None
    strict: Annotated[bool | None, Field(title="Strict")] = None


class LoadAdapterRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    name: Annotated[
        str,
        Field(
            description="1-64 letters, digits, '.', '_' or '-'; not only dots, not starting with '__'",
            max_length=64,
            min_length=1,
            pattern="^(?:[A-Za-z0-9-][A-Za-z0-9._-]*|_(?:[A-Za-z0-9.-][A-Za-z0-9._-]*)?|\\.+[A-Za-z0-9_-][A-Za-z0-9._-]*)$",
            title="Name",
        ),
    ]
    path: Annotated[
        str, Field(description="adapter folder on the server, under an --adapter-root", min_length=1, title="Path")
    ]
    kind: Annotated[Literal["patient", "doctor"], Field(title="Kind")]


class PromptInput1(RootModel[list[str]]):
    root: Annotated[list[str], Field(min_length=1)]


class PromptInput2Item(RootModel[int]):
    root: Annotated[int, Field(ge=0)]


class PromptInput2(RootModel[list[PromptInput2Item]]):
    root: Annotated[list[PromptInput2Item], Field(min_length=1)]


class PromptInput3ItemItem(RootModel[int]):
    root: Annotated[int, Field(ge=0)]


class PromptInput3Item(RootModel[list[PromptInput3ItemItem]]):
    root: Annotated[list[PromptInput3ItemItem], Field(min_length=1)]


class PromptInput3(RootModel[list[PromptInput3Item]]):
    root: Annotated[list[PromptInput3Item], Field(min_length=1)]


class ReplicaHealth(BaseModel):
    """
    One engine replica of `serve --replicas N`, as it last reported itself.
    """

    replica: Annotated[str, Field(title="Replica")]
    healthy: Annotated[bool, Field(title="Healthy")]
    pid: Annotated[int | None, Field(title="Pid")] = None
    seconds_since_report: Annotated[float | None, Field(title="Seconds Since Report")] = None
    running: Annotated[int | None, Field(title="Running")] = 0
    waiting: Annotated[int | None, Field(title="Waiting")] = 0
    adapters: Annotated[list[str] | None, Field(title="Adapters")] = []
    adapter_failures: Annotated[dict[str, str] | None, Field(title="Adapter Failures")] = {}


class ResponseFormat(BaseModel):
    """
    `{"type": "text"}` (the default), `{"type": "json_object"}` (any JSON object) or
    `{"type": "json_schema", "json_schema": {"name", "schema"}}`: enforced token by token on the rule.
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    type: Annotated[Literal["text", "json_object", "json_schema"], Field(title="Type")]
    json_schema: JsonSchemaFormat | None = None


class StopInput1(RootModel[str]):
    root: Annotated[str, Field(min_length=1)]


class StopInput2Item(RootModel[str]):
    root: Annotated[str, Field(min_length=1)]


class StopInput2(RootModel[list[StopInput2Item]]):
    root: Annotated[list[StopInput2Item], Field(max_length=16)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    include_usage: Annotated[bool | None, Field(title="Include Usage")] = False
    continuous_usage_stats: Annotated[
        bool | None,
        Field(
            description="vLLM's extension: with include_usage, every chunk also carries its choice's usage so far",
            title="Continuous Usage Stats",
        ),
    ] = False


class TextContentPart(BaseModel):
    """
    The one content part served: OpenAI's `{"type": "text", "text": ...}` (declared for openapi.json).
    """

    type: Annotated[Literal["text"], Field(title="Type")]
    text: Annotated[str, Field(title="Text")]


class TokenExplanationOut(BaseModel):
    """
    One generated token under `guidance.explain`. `rule_logprob` is the log-prob of the distribution the token
    was drawn from (the value `logprobs` reports); `kl` the rule's KL from the patient at that step (nats);
    `beta_scale` the factor guidance.max_kl put on the doctors' pull (1: within budget).
    """

    token: Annotated[str, Field(title="Token")]
    patient_logprob: Annotated[float, Field(title="Patient Logprob")]
    doctor_logprobs: Annotated[dict[str, float], Field(title="Doctor Logprobs")]
    rule_logprob: Annotated[float, Field(title="Rule Logprob")]
    kl: Annotated[float, Field(title="Kl")]
    beta_scale: Annotated[float | None, Field(title="Beta Scale")] = 1.0


class TokenizeResponse(BaseModel):
    count: Annotated[int, Field(title="Count")]
    max_model_len: Annotated[int, Field(title="Max Model Len")]
    tokens: Annotated[list[int], Field(title="Tokens")]
    token_strs: Annotated[list[str] | None, Field(title="Token Strs")] = None


class TopLogprob(BaseModel):
    token: Annotated[str, Field(title="Token")]
    logprob: Annotated[float, Field(title="Logprob")]
    bytes: Annotated[list[int] | None, Field(title="Bytes")] = None


class UsageInfo(BaseModel):
    prompt_tokens: Annotated[int, Field(title="Prompt Tokens")]
    completion_tokens: Annotated[int, Field(title="Completion Tokens")]
    total_tokens: Annotated[int, Field(title="Total Tokens")]
    mean_kl_per_token: Annotated[
        float | None,
        Field(
            description="guided requests: the rule's mean KL from the patient per generated token, in nats, over every choice (what guidance.max_kl bounds step by step); null without guidance",
            title="Mean Kl Per Token",
        ),
    ] = None


class DeltaMessage(BaseModel):
    """
    Only the fields that changed, as OpenAI streams them (`{"role": ...}` once, then `{"content": ...}`).
    """

    role: Annotated[Literal["assistant"] | None, Field(title="Role")] = None
    content: Annotated[str | None, Field(title="Content")] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    role: Annotated[Literal["system", "developer", "user", "assistant"], Field(title="Role")]
    content: Annotated[
        str | list[TextContentPart], Field(description="a string, or a list of text parts (joined)", title="Content")
    ]
    name: Annotated[str | None, Field(title="Name")] = None


class CompletionChoice(BaseModel):
    index: Annotated[int, Field(title="Index")]
    completion_id: Annotated[
        str | None,
        Field(
            description="the choice's id in the completion log, which feedback votes name; only when the server logs completions (--log-completions); in a stream, on the choice's first chunk",
            title="Completion Id",
        ),
    ] = None
    text: Annotated[str, Field(title="Text")]
    logprobs: CompletionLogprobs | None = None
    finish_reason: Annotated[Literal["stop", "length", "abort"] | None, Field(title="Finish Reason")] = None
    explanation: Annotated[
        list[TokenExplanationOut] | None,
        Field(
            description="guidance.explain: one entry per generated token (in a stream, per chunk)", title="Explanation"
        ),
    ] = None


class CompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    model: Annotated[str | None, Field(title="Model")] = None
    n: Annotated[int | None, Field(ge=1, le=64, title="N")] = 1
    temperature: Annotated[
        float | None,
        Field(
            description="0 = greedy; values in (0, 0.01) are raised to 0.01, as vLLM does",
            ge=0.0,
            le=2.0,
            title="Temperature",
        ),
    ] = 1.0
    top_p: Annotated[
        float | None,
        Field(description="nucleus mass in (0, 1]; the most likely token always stays", gt=0.0, le=1.0, title="Top P"),
    ] = 1.0
    top_k: Annotated[
        int | None,
        Field(
            description="0 or -1 = off; a value >= the vocabulary size is off too", ge=-1, le=2147483647, title="Top K"
        ),
    ] = 0
    seed: Annotated[Seed | None, Field(title="Seed")] = None
    stop: Annotated[StopInput1 | StopInput2 | None, Field(title="Stop")] = None
    stop_token_ids: Annotated[list[StopTokenId] | None, Field(title="Stop Token Ids")] = None
    ignore_eos: Annotated[bool | None, Field(title="Ignore Eos")] = False
    stream: Annotated[bool | None, Field(title="Stream")] = False
    stream_options: StreamOptions | None = None
    guidance: GuidanceSchema | None = None
    frequency_penalty: Annotated[
        float | None,
        Field(
            description="minus penalty x the token's count in the output so far",
            ge=-2.0,
            le=2.0,
            title="Frequency Penalty",
        ),
    ] = 0.0
    presence_penalty: Annotated[
        float | None,
        Field(description="minus penalty once the token is in the output", ge=-2.0, le=2.0, title="Presence Penalty"),
    ] = 0.0
    repetition_penalty: Annotated[
        float | None,
        Field(
            description="vLLM's extension: a token seen in the prompt or output has its score divided by this when positive, multiplied when not; 1 = off",
            gt=0.0,
            le=100.0,
            title="Repetition Penalty",
        ),
    ] = 1.0
    logit_bias: Annotated[
        dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")], float] | None,
        Field(
            description="token id (as a string) -> a bias added to its score, in [-100, 100]; -100 bans it",
            title="Logit Bias",
        ),
    ] = None
    min_p: Annotated[
        float | None,
        Field(
            description="vLLM's extension: drop tokens less likely than min_p x the most likely one (after temperature); 0 = off",
            ge=0.0,
            le=1.0,
            title="Min P",
        ),
    ] = 0.0
    min_tokens: Annotated[
        int | None,
        Field(
            description="vLLM's extension: EOS and stop_token_ids cannot end the output before this many tokens",
            ge=0,
            title="Min Tokens",
        ),
    ] = 0
    response_format: ResponseFormat | None = None
    user: Annotated[str | None, Field(title="User")] = None
    prompt: Annotated[
        str | PromptInput1 | PromptInput2 | PromptInput3,
        Field(
            description="a string, a list of strings, a list of token ids or a list of token-id lists; lists non-empty",
            title="Prompt",
        ),
    ]
    max_tokens: Annotated[int | None, Field(ge=1, title="Max Tokens")] = 16
    logprobs: Annotated[Logprobs | None, Field(title="Logprobs")] = None
    echo: Annotated[bool | None, Field(title="Echo")] = False
    suffix: Annotated[str | None, Field(title="Suffix")] = None
    best_of: Annotated[int | None, Field(title="Best Of")] = None


class CompletionResponse(BaseModel):
    id: Annotated[str, Field(title="Id")]
    object: Annotated[Literal["text_completion"], Field(title="Object")] = "text_completion"
    created: Annotated[int | None, Field(title="Created")] = None
    model: Annotated[str, Field(title="Model")]
    choices: Annotated[list[CompletionChoice], Field(title="Choices")]
    usage: UsageInfo | None = None


class DoctorEval(BaseModel):
    """
    How a doctor made by `llmdoctor recipe` did on held-out prompts (its llmdoctor.json).
    """

    score: Annotated[str, Field(title="Score")]
    beta: Annotated[float, Field(title="Beta")]
    doctor: EvalRow
    patient: EvalRow
    dpo: EvalRow | None = None
    prompts: Annotated[str | None, Field(title="Prompts")] = None
    max_tokens: Annotated[int | None, Field(title="Max Tokens")] = None
    temperature: Annotated[float | None, Field(title="Temperature")] = None


class HealthStatus(BaseModel):
    """
    200: the engine loop runs and the server admits requests. Otherwise a 503 ErrorResponse,
    type `service_unavailable`: "shutting down" (draining) or "the engine loop is not running".
    With --replicas: 200 while at least one replica is healthy; `replicas` lists each.
    """

    status: Annotated[Literal["ok"], Field(title="Status")] = "ok"
    replicas: Annotated[list[ReplicaHealth] | None, Field(title="Replicas")] = None


class ModelCard(BaseModel):
    id: Annotated[str, Field(title="Id")]
    object: Annotated[Literal["model"], Field(title="Object")] = "model"
    created: Annotated[int | None, Field(title="Created")] = None
    owned_by: Annotated[str | None, Field(title="Owned By")] = "llmdoctor"
    kind: Annotated[Literal["patient", "patient_adapter", "doctor"], Field(title="Kind")]
    parent: Annotated[str | None, Field(title="Parent")] = None
    max_model_len: Annotated[int | None, Field(title="Max Model Len")] = None
    dimension: Annotated[str | None, Field(title="Dimension")] = None
    eval: DoctorEval | None = None


class ModelList(BaseModel):
    object: Annotated[Literal["list"], Field(title="Object")] = "list"
    data: Annotated[list[ModelCard], Field(title="Data")]


class TokenLogprobOut(BaseModel):
    token: Annotated[str, Field(title="Token")]
    logprob: Annotated[float, Field(title="Logprob")]
    bytes: Annotated[list[int] | None, Field(title="Bytes")] = None
    top_logprobs: Annotated[list[TopLogprob] | None, Field(title="Top Logprobs")] = None


class Messages(RootModel[list[ChatMessage]]):
    root: Annotated[list[ChatMessage], Field(min_length=1, title="Messages")]


class TokenizeRequest(BaseModel):
    """
    vLLM's two tokenize requests in one: `prompt` (text, as /v1/completions takes it) or `messages` (through
    the model's chat template, as /v1/chat/completions applies it).
    """

    model_config = ConfigDict(
        extra="forbid",
    )
    model: Annotated[
        str | None, Field(description="the patient or a patient adapter (they share the tokenizer)", title="Model")
    ] = None
    prompt: Annotated[str | None, Field(title="Prompt")] = None
    messages: Annotated[Messages | None, Field(title="Messages")] = None
    add_special_tokens: Annotated[
        bool | None,
        Field(
            description="add the tokenizer's special tokens (e.g. BOS) on top of the text or template; off, as the generation endpoints tokenise, so `count` is what the prompt costs there",
            title="Add Special Tokens",
        ),
    ] = False
    add_generation_prompt: Annotated[
        bool | None,
        Field(description="with `messages`: end with the assistant's turn opened", title="Add Generation Prompt"),
    ] = True
    continue_final_message: Annotated[
        bool | None, Field(description="with `messages`: leave the last message open", title="Continue Final Message")
    ] = False
    return_token_strs: Annotated[
        bool | None, Field(description="also return each token's string", title="Return Token Strs")
    ] = False


class CompletionStreamResponse(BaseModel):
    """
    One SSE chunk; OpenAI streams the same object type as the full response.
    """

    id: Annotated[str, Field(title="Id")]
    object: Annotated[Literal["text_completion"], Field(title="Object")] = "text_completion"
    created: Annotated[int | None, Field(title="Created")] = None
    model: Annotated[str, Field(title="Model")]
    choices: Annotated[list[CompletionChoice], Field(title="Choices")]
    usage: UsageInfo | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
    )
    model: Annotated[str | None, Field(title="Model")] = None
    n: Annotated[int | None, Field(ge=1, le=64, title="N")] = 1
    temperature: Annotated[
        float | None,
        Field(
            description="0 = greedy; values in (0, 0.01) are raised to 0.01, as vLLM does",
            ge=0.0,
            le=2.0,
            title="Temperature",
        ),
    ] = 1.0
    top_p: Annotated[
        float | None,
        Field(description="nucleus mass in (0, 1]; the most likely token always stays", gt=0.0, le=1.0, title="Top P"),
    ] = 1.0
    top_k: Annotated[
        int | None,
        Field(
            description="0 or -1 = off; a value >= the vocabulary size is off too", ge=-1, le=2147483647, title="Top K"
        ),
    ] = 0
    seed: Annotated[Seed | None, Field(title="Seed")] = None
    stop: Annotated[StopInput1 | StopInput2 | None, Field(title="Stop")] = None
    stop_token_ids: Annotated[list[StopTokenId] | None, Field(title="Stop Token Ids")] = None
    ignore_eos: Annotated[bool | None, Field(title="Ignore Eos")] = False
    stream: Annotated[bool | None, Field(title="Stream")] = False
    stream_options: StreamOptions | None = None
    guidance: GuidanceSchema | None = None
    frequency_penalty: Annotated[
        float | None,
        Field(
            description="minus penalty x the token's count in the output so far",
            ge=-2.0,
            le=2.0,
            title="Frequency Penalty",
        ),
    ] = 0.0
    presence_penalty: Annotated[
        float | None,
        Field(description="minus penalty once the token is in the output", ge=-2.0, le=2.0, title="Presence Penalty"),
    ] = 0.0
    repetition_penalty: Annotated[
        float | None,
        Field(
            description="vLLM's extension: a token seen in the prompt or output has its score divided by this when positive, multiplied when not; 1 = off",
            gt=0.0,
            le=100.0,
            title="Repetition Penalty",
        ),
    ] = 1.0
    logit_bias: Annotated[
        dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,10}$")], float] | None,
        Field(
            description="token id (as a string) -> a bias added to its score, in [-100, 100]; -100 bans it",
            title="Logit Bias",
        ),
    ] = None
    min_p: Annotated[
        float | None,
        Field(
            description="vLLM's extension: drop tokens less likely than min_p x the most likely one (after temperature); 0 = off",
            ge=0.0,
            le=1.0,
            title="Min P",
        ),
    ] = 0.0
    min_tokens: Annotated[
        int | None,
        Field(
            description="vLLM's extension: EOS and stop_token_ids cannot end the output before this many tokens",
            ge=0,
            title="Min Tokens",
        ),
    ] = 0
    response_format: ResponseFormat | None = None
    user: Annotated[str | None, Field(title="User")] = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, title="Messages")]
    max_tokens: Annotated[MaxTokens | None, Field(title="Max Tokens")] = None
    max_completion_tokens: Annotated[MaxCompletionTokens | None, Field(title="Max Completion Tokens")] = None
    logprobs: Annotated[bool | None, Field(title="Logprobs")] = False
    top_logprobs: Annotated[TopLogprobs | None, Field(title="Top Logprobs")] = None
    add_generation_prompt: Annotated[bool | None, Field(title="Add Generation Prompt")] = True
    continue_final_message: Annotated[bool | None, Field(title="Continue Final Message")] = False


class ChatLogprobs(BaseModel):
    content: Annotated[list[TokenLogprobOut] | None, Field(title="Content")] = None
    refusal: Annotated[list[TokenLogprobOut] | None, Field(title="Refusal")] = None


class ChatStreamChoice(BaseModel):
    index: Annotated[int, Field(title="Index")]
    completion_id: Annotated[
        str | None,
        Field(
            description="the choice's id in the completion log, which feedback votes name; only when the server logs completions (--log-completions); in a stream, on the choice's first chunk",
            title="Completion Id",
        ),
    ] = None
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Annotated[Literal["stop", "length", "abort"] | None, Field(title="Finish Reason")] = None
    explanation: Annotated[
        list[TokenExplanationOut] | None,
        Field(
            description="guidance.explain: one entry per generated token (in a stream, per chunk)", title="Explanation"
        ),
    ] = None


class ChatChoice(BaseModel):
    index: Annotated[int, Field(title="Index")]
    completion_id: Annotated[
        str | None,
        Field(
            description="the choice's id in the completion log, which feedback votes name; only when the server logs completions (--log-completions); in a stream, on the choice's first chunk",
            title="Completion Id",
        ),
    ] = None
    message: ChatMessageOut
    logprobs: ChatLogprobs | None = None
    finish_reason: Annotated[Literal["stop", "length", "abort"] | None, Field(title="Finish Reason")] = None
    explanation: Annotated[
        list[TokenExplanationOut] | None,
        Field(
            description="guidance.explain: one entry per generated token (in a stream, per chunk)", title="Explanation"
        ),
    ] = None


class ChatCompletionResponse(BaseModel):
    id: Annotated[str, Field(title="Id")]
    object: Annotated[Literal["chat.completion"], Field(title="Object")] = "chat.completion"
    created: Annotated[int | None, Field(title="Created")] = None
    model: Annotated[str, Field(title="Model")]
    choices: Annotated[list[ChatChoice], Field(title="Choices")]
    usage: UsageInfo | None = None


class ChatCompletionChunk(BaseModel):
    id: Annotated[str, Field(title="Id")]
    object: Annotated[Literal["chat.completion.chunk"], Field(title="Object")] = "chat.completion.chunk"
    created: Annotated[int | None, Field(title="Created")] = None
    model: Annotated[str, Field(title="Model")]
    choices: Annotated[list[ChatStreamChoice], Field(title="Choices")]
    usage: UsageInfo | None = None
