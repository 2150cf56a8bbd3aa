"""When to retry a failed call, and how long to wait first.

A call is retried only where no work was done or where repeating it is harmless:
- the server refused it before starting (429, 503; their `Retry-After` is honoured);
- the connection failed before the request was sent (refused, connect timeout, no pooled connection);
- any connection failure of an idempotent call (GET, DELETE).
Never a generation that may be running, and never a stream that has yielded data (the client only
retries while opening it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from llmdoctor_client.errors import APIError, parse_retry_after

RETRY_STATUSES = frozenset({429, 503})
# Transport failures raised before any byte of the request left this machine.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 2
    initial_backoff: float = 0.5  # seconds before the first retry, doubled each time
    max_backoff: float = 8.0
    max_retry_after: float = 60.0  # a server asking for a longer wait gets the error raised instead

    def delay(self, error: APIError, attempt: int, replayable: bool) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None to raise `error`.

        `replayable`: the call is idempotent, or it failed before being sent.
        """
        if attempt >= self.max_retries or not is_retryable(error, replayable):
            return None
        backoff = min(self.max_backoff, self.initial_backoff * 2**attempt)
        backoff *= 0.5 + random.random() / 2  # jitter: clients that failed together do not return together
        retry_after = parse_retry_after(error.headers.get("retry-after")) if error.status else None
        if retry_after is None:
            return backoff
        if retry_after > self.max_retry_after:
            return None
        return max(backoff, retry_after * (1 + random.random() / 4))  # never sooner than asked


def is_retryable(error: APIError, replayable: bool) -> bool:
    if error.status is None:  # no answer at all
        return replayable
    return error.status in RETRY_STATUSES
