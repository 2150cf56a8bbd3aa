"""`Client`: the synchronous client. `AsyncClient` (async_client.py) has the same surface."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Generic, Literal, Self, TypeVar, overload

import httpx
from pydantic import BaseModel

from llmdoctor_client import _shared as s
from llmdoctor_client._retry import NOT_SENT, RetryPolicy
from llmdoctor_client.errors import APIError, error_from_response
from llmdoctor_client.types import (
    AdapterCard,
    AdapterDeleted,
    AdapterList,
    ChatCompletion,
    ChatCompletionChunk,
    Completion,
    CompletionChunk,
    DetokenizeResponse,
    HealthStatus,
    ModelCard,
    ModelList,
    TokenizeResponse,
)

ChunkT = TypeVar("ChunkT", bound=BaseModel)
IDEMPOTENT = frozenset({"GET", "HEAD", "DELETE"})


class Stream(Generic[ChunkT]):
    """The chunks of one streamed call, in order; ends at `data: [DONE]`.

    Close it (or use `with`) to stop early: the connection closes and the server frees the slot.
    An error event mid-stream raises its APIError; a broken connection raises APIConnectionError.
    """

    def __init__(self, response: httpx.Response, chunk_type: type[ChunkT]):
        self.response = response
        self._chunk_type = chunk_type
        self._chunks = self._iterate()

    def _iterate(self) -> Iterator[ChunkT]:
        try:
            for line in self.response.iter_lines():
                event = s.parse_sse_line(line)
                if event is s.DONE:
                    return
                if event is not None:
                    yield self._chunk_type.model_validate(event)
        except httpx.TransportError as exc:
            raise s.connection_error(exc, self.response.request) from exc
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[ChunkT]:
        return self

    def __next__(self) -> ChunkT:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        self.response.close()

    def __enter__(self) -> Stream[ChunkT]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Adapters:
    """`client.adapters`: hot-load, list and unload LoRA adapters on the server."""

    def __init__(self, client: Client):
        self._client = client

    def list(self) -> list[AdapterCard]:
        return AdapterList.model_validate(self._client._json("GET", "/v1/adapters")).data

    def load(self, name: str, path: str, kind: Literal["patient", "doctor"] = "doctor") -> AdapterCard:
        """`path`: a folder on the server, under one of its --adapter-root folders."""
        body = {"name": name, "path": path, "kind": kind}
        return AdapterCard.model_validate(self._client._json("POST", "/v1/adapters", body))

    def unload(self, name: str) -> AdapterDeleted:
        return AdapterDeleted.model_validate(self._client._json("DELETE", f"/v1/adapters/{name}"))


class Client:
    """Synchronous client for an llmdoctor server.

    `base_url` and `api_key` default to $LLMDOCTOR_BASE_URL (else http://127.0.0.1:8000) and
    $LLMDOCTOR_API_KEY. `timeout` is seconds or an httpx.Timeout. Refused calls (429, 503) and
    failed connections are retried up to `max_retries` times with exponential backoff and jitter
    (see _retry.py for exactly which). `http_client`, when given, is used as is and not closed.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout | None = None,
        max_retries: int = 2,
        retry: RetryPolicy | None = None,
        http_client: httpx.Client | None = None,
    ):
        self.base_url = s.resolve_base_url(base_url)
        self.api_key = s.resolve_api_key(api_key)
        self.timeout = s.as_timeout(timeout)
        self.retry = retry or RetryPolicy(max_retries=max_retries)
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client()
        self.adapters = Adapters(self)

    # ---- generation -------------------------------------------------------------------------

    @overload
    def chat(self, messages: s.Messages, *, model: str | None = ..., guidance: s.GuidanceLike = ...,
             stream: Literal[False] = ..., **sampling: Any) -> ChatCompletion: ...

    @overload
    def chat(self, messages: s.Messages, *, model: str | None = ..., guidance: s.GuidanceLike = ...,
             stream: Literal[True], **sampling: Any) -> Stream[ChatCompletionChunk]: ...

    def chat(self, messages, *, model=None, guidance=None, stream=False, **sampling):
        """POST /v1/chat/completions. `messages`: dicts or ChatMessage, or one string (a user message);
        `sampling`: any other request field (max_tokens, temperature, seed, stop, n, logprobs ...)."""
        body = s.chat_body(messages, model, guidance, stream, sampling)
        if stream:
            return Stream(self._open_stream("/v1/chat/completions", body), ChatCompletionChunk)
        return ChatCompletion.model_validate(self._json("POST", "/v1/chat/completions", body))

    @overload
    def complete(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]], *,
                 model: str | None = ..., guidance: s.GuidanceLike = ..., stream: Literal[False] = ...,
                 **sampling: Any) -> Completion: ...

    @overload
    def complete(self, prompt: str | Sequence[str] | Sequence[int] | Sequence[Sequence[int]], *,
                 model: str | None = ..., guidance: s.GuidanceLike = ..., stream: Literal[True],
                 **sampling: Any) -> Stream[CompletionChunk]: ...

    def complete(self, prompt, *, model=None, guidance=None, stream=False, **sampling):
        """POST /v1/completions. `prompt`: text, texts, token ids or lists of token ids."""
        body = s.completion_body(prompt, model, guidance, stream, sampling)
        if stream:
            return Stream(self._open_stream("/v1/completions", body), CompletionChunk)
        return Completion.model_validate(self._json("POST", "/v1/completions", body))

    # ---- the rest ---------------------------------------------------------------------------

    def models(self) -> list[ModelCard]:
        """GET /v1/models: the patient, its adapters (usable as `model`) and the doctors (for `guidance`)."""
        return ModelList.model_validate(self._json("GET", "/v1/models")).data

    def tokenize(self, prompt: str | None = None, *, messages: s.Messages | None = None,
                 model: str | None = None, **options: Any) -> TokenizeResponse:
        """POST /tokenize: the token ids a completion's `prompt` (or a chat's `messages`, through the model's
        template) costs. Options: return_token_strs, add_special_tokens, add_generation_prompt,
        continue_final_message."""
        body = s.tokenize_body(prompt, messages, model, options)
        return TokenizeResponse.model_validate(self._json("POST", "/tokenize", body))

    def detokenize(self, tokens: Sequence[int], *, model: str | None = None) -> DetokenizeResponse:
        """POST /detokenize: token ids back to text (special tokens kept)."""
        body: dict[str, Any] = {"tokens": list(tokens)} | ({"model": model} if model is not None else {})
        return DetokenizeResponse.model_validate(self._json("POST", "/detokenize", body))

    def health(self) -> HealthStatus:
        """GET /health, not retried: `status == "ok"`, or OverloadedError (503) while the server
        starts, drains or has lost its engine."""
        return HealthStatus.model_validate(self._send("GET", "/health", retry=RetryPolicy(max_retries=0)).json())

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- transport --------------------------------------------------------------------------

    def _json(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._send(method, path, body).json()

    def _open_stream(self, path: str, body: Mapping[str, Any]) -> httpx.Response:
        """The open SSE response; retried only until the server accepted it."""
        return self._send("POST", path, body, stream=True)

    def _send(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, stream: bool = False,
              retry: RetryPolicy | None = None) -> httpx.Response:
        """A successful response (read, unless `stream`); raises APIError after the retries."""
        retry = retry or self.retry
        request = self._http.build_request(method, self.base_url + path, json=body,
                                           headers=s.headers(self.api_key), timeout=self.timeout)
        attempt = 0
        while True:
            try:
                response = self._http.send(request, stream=stream)
            except httpx.TransportError as exc:
                error: APIError = s.connection_error(exc, request)
                replayable = method in IDEMPOTENT or isinstance(exc, NOT_SENT)
            else:
                if response.is_success:
                    return response
                response.read()
                response.close()
                error, replayable = error_from_response(response), method in IDEMPOTENT
            delay = retry.delay(error, attempt, replayable)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1
