"""The completion log: every choice the server serves, written to the feedback database in batches.

    log = CompletionLog(open_database(url))
    log.add(record)   # on the event loop: only enqueues; never blocks, never raises
    log.close()       # at shutdown: writes what is queued, then stops the writer

One writer thread drains a bounded queue and inserts up to `batch_size` rows per transaction, at the
latest `flush_seconds` after the first of them arrived: decoding never waits on the database. A dead
or slow database costs rows, not memory or latency: a full queue drops new records (a counted
warning) and a failed write logs how many rows it lost. Requests never see either.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import insert

from llmdoctor.server.feedback.models import Completion, guidance_key, prompt_key

if TYPE_CHECKING:
    from llmdoctor.server.feedback.database import FeedbackDatabase  # Alembic: loaded only when logging

logger = logging.getLogger(__name__)

BATCH_SIZE = 100  # rows per transaction at most
FLUSH_SECONDS = 0.25  # a row waits at most this long for others to share its transaction
MAX_PENDING = 10_000  # queued rows; beyond, new ones are dropped (the database is not keeping up)
DROP_WARNING_EVERY = 1000  # one warning per this many dropped rows, not one per row
_WAKE_UP = None  # queued by close()


@dataclass(frozen=True)
class CompletionRecord:
    """One ended choice, as the serving code knows it; `row()` adds the keys (hashing is the writer's work)."""

    id: str  # the completion_id the response carried
    request_id: str  # the response's id
    choice_index: int
    endpoint: str  # "chat" | "completions"
    prompt: str | list[Any]  # the messages list (chat), the prompt string or token ids (completions)
    output_text: str
    output_token_ids: list[int]
    model: str
    patient_adapter: str | None
    guidance: dict | None  # the request's guidance as JSON
    sampling: dict  # the request's sampling parameters as JSON
    finish_reason: str | None  # None when the choice was cut off (client gone, timeout, error)
    status: str  # "finished" | "aborted"
    created_at: datetime  # the request's arrival, UTC
    finished_at: datetime

    def row(self) -> dict[str, Any]:
        return {**asdict(self), "prompt_key": prompt_key(self.prompt),
                "guidance_key": guidance_key(self.guidance, self.patient_adapter)}


class CompletionLog:
    """Owns `database` (closes it). `on_written(count)` and `on_lost(reason, count)` are called from the
    writer thread (reason "write_failed") or the caller of add (reason "queue_full"), e.g. metrics."""

    def __init__(
        self,
        database: FeedbackDatabase,
        *,
        batch_size: int = BATCH_SIZE,
        flush_seconds: float = FLUSH_SECONDS,
        max_pending: int = MAX_PENDING,
        on_written: Callable[[int], None] = lambda count: None,
        on_lost: Callable[[str, int], None] = lambda reason, count: None,
    ):
        self.database = database
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.written = 0  # rows committed
        self.dropped = 0  # rows refused by a full queue
        self.lost = 0  # rows of failed writes
        self._on_written = on_written
        self._on_lost = on_lost
        self._queue: queue.Queue[CompletionRecord | None] = queue.Queue(maxsize=max_pending)
        self._closing = threading.Event()
        self._writer = threading.Thread(target=self._write_until_closed, name="completion-log", daemon=True)
        self._writer.start()

    def add(self, record: CompletionRecord) -> None:
        """Queue `record` for writing; drops it (counted, warned) when the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            self._on_lost("queue_full", 1)
            if self.dropped % DROP_WARNING_EVERY == 1:
                logger.warning("completion log: %d row(s) dropped so far: %d are waiting for %s, which is not "
                               "keeping up", self.dropped, self._queue.maxsize, self.database.url)

    def close(self, timeout: float = 60.0) -> None:
        """Write everything queued, stop the writer, close the database. Idempotent."""
        self._closing.set()
        try:
            self._queue.put_nowait(_WAKE_UP)  # a writer waiting for more records stops waiting now
        except queue.Full:
            pass  # it is not waiting then
        self._writer.join(timeout)
        if self._writer.is_alive():
            logger.error("completion log: the writer did not finish within %g s; %d queued row(s) are lost",
                         timeout, self._queue.qsize())
        self.database.close()

    def _write_until_closed(self) -> None:
        while True:
            batch = self._next_batch()
            if batch:
                self._write(batch)
            elif self._closing.is_set():
                return

    def _next_batch(self) -> list[CompletionRecord]:
        """Up to batch_size records: waits flush_seconds for a first one, then at most flush_seconds more for
        others; once closing, takes only what is queued. [] when none came."""
        batch: list[CompletionRecord] = []
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            wait = 0.0 if self._closing.is_set() else deadline - time.monotonic()
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _WAKE_UP:
                continue
            if not batch:
                deadline = time.monotonic() + self.flush_seconds
            batch.append(item)
        return batch

    def _write(self, batch: list[CompletionRecord]) -> None:
        """One transaction; a failure loses this batch only (logged), the writer goes on."""
        try:
            rows = [record.row() for record in batch]
            with self.database.session() as session, session.begin():
                session.execute(insert(Completion), rows)
        except Exception as exc:  # any database or driver error: the server must keep serving
            self.lost += len(batch)
            self._on_lost("write_failed", len(batch))
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.error("completion log: writing %d row(s) to %s failed, they are lost (%d lost so far): %s",
                         len(batch), self.database.url, self.lost, reason)
            return
        self.written += len(batch)
        self._on_written(len(batch))
