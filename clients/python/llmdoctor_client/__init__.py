"""Python client for llmdoctor: an OpenAI-compatible server with per-request decode-time guidance.

    from llmdoctor_client import Client, Guidance

    with Client() as client:  # $LLMDOCTOR_BASE_URL, $LLMDOCTOR_API_KEY
        reply = client.chat("Say something about Mondays.", guidance=Guidance(doctors={"cheerful": 0.8}))
        print(reply.text)
"""

from llmdoctor_client._retry import RetryPolicy
from llmdoctor_client.async_client import AsyncClient, AsyncStream
from llmdoctor_client.client import Client, Stream
from llmdoctor_client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    RateLimitError,
    ServerTimeoutError,
)
from llmdoctor_client.types import (
    AdapterCard,
    AdapterDeleted,
    ChatCompletion,
    ChatCompletionChunk,
    ChatMessage,
    Completion,
    CompletionChunk,
    DetokenizeResponse,
    DoctorWeight,
    Guidance,
    HealthStatus,
    ModelCard,
    TokenizeResponse,
    UsageInfo,
)

__version__ = "0.1.0"

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AdapterCard",
    "AdapterDeleted",
    "AsyncClient",
    "AsyncStream",
    "AuthenticationError",
    "BadRequestError",
    "ChatCompletion",
    "ChatCompletionChunk",
    "ChatMessage",
    "Client",
    "Completion",
    "CompletionChunk",
    "ConflictError",
    "DetokenizeResponse",
    "DoctorWeight",
    "Guidance",
    "HealthStatus",
    "InternalServerError",
    "ModelCard",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "RetryPolicy",
    "ServerTimeoutError",
    "Stream",
    "TokenizeResponse",
    "UsageInfo",
]
