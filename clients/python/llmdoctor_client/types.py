"""The types the client returns and takes: the generated server schemas plus a few conveniences.

Every field comes from `_generated.py` (generated from the server's OpenAPI document); the
subclasses here add only helpers (`.text`, the mapping form of `Guidance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import field_validator

from llmdoctor_client import _generated as g

# Re-exported as they are.
AdapterCard = g.AdapterCard
AdapterDeleted = g.AdapterDeleted
AdapterList = g.AdapterList
ModelCard = g.ModelCard
ModelList = g.ModelList
HealthStatus = g.HealthStatus
TokenizeResponse = g.TokenizeResponse
DetokenizeResponse = g.DetokenizeResponse
UsageInfo = g.UsageInfo
ChatMessage = g.ChatMessage
DoctorWeight = g.DoctorWeightSchema


class Guidance(g.GuidanceSchema):
    """Per-request decode-time guidance: `Guidance(alpha=1.0, doctors={"cheerful": 0.8})`.

    `doctors` is a mapping name -> beta, or a list of `{"name", "beta"}` as the server sends it.
    """

    @field_validator("doctors", mode="before")
    @classmethod
    def _mapping_to_list(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return [{"name": name, "beta": beta} for name, beta in value.items()]
        return value


class ChatCompletion(g.ChatCompletionResponse):
    @property
    def text(self) -> str:
        """The first choice's reply."""
        return self.choices[0].message.content


class Completion(g.CompletionResponse):
    @property
    def text(self) -> str:
        """The first choice's text."""
        return self.choices[0].text


class ChatCompletionChunk(g.ChatCompletionChunk):
    @property
    def text(self) -> str:
        """The text this chunk adds ("" for the role, finish and usage chunks)."""
        return "".join(c.delta.content or "" for c in self.choices)


class CompletionChunk(g.CompletionStreamResponse):
    @property
    def text(self) -> str:
        """The text this chunk adds ("" for the usage chunk)."""
        return "".join(c.text for c in self.choices)
