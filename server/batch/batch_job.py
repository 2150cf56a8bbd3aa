"""`llmdoctor batch --input requests.jsonl --output results.jsonl [--replicas N] [--guidance JSON]`.

An offline job on Ray Data: the requests still to do (ids not yet in --output) become a dataset,
`map_batches` sends them through an actor pool of N engine replicas (batch_worker.py), and this
driver appends each result batch to --output as it arrives, with a progress bar (rows/s, ETA).
Files and resume: batch_files.py. Without --ray-address a local Ray starts for the job and stops
with it; with one (`auto`, `ray://head:10001`) the job runs on that cluster.

Replicas are placed as `serve --replicas` places them (server/replicas/ray_placement.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmdoctor.server.batch.batch_files import BatchFileError, BatchRequest, ResultFile, read_requests
from llmdoctor.server.config import ServerSettings
from llmdoctor.server.replicas.ray_placement import replica_error_message
from llmdoctor.server.shipped_doctors import startup_doctors

EXIT_USAGE, EXIT_FAILED, EXIT_INTERRUPTED = 2, 1, 130
# the serve flags a batch job takes too (the engine, its model, doctors and adapters)
ENGINE_FIELDS = ("model", "doctor_base", "doctor", "default_doctors", "lora", "engine", "device", "dtype", "max_batch",
                 "max_queue", "request_timeout", "cache_dir", "max_model_len", "max_lora_rank", "max_loras", "log_level")
BATCHES_IN_FLIGHT = 4  # per replica: Ray Data's default concurrency for an async batch UDF


@dataclass
class BatchOptions:
    input: Path
    output: Path
    settings: ServerSettings
    replicas: int = 1
    ray_address: str | None = None
    guidance: dict | None = None
    batch_size: int = 16
    retry_errors: bool = False


class BatchUsageError(ValueError):
    """A flag the job cannot start with; the message names it."""


def plan(options: BatchOptions, stream) -> list[BatchRequest]:
    """The requests still to do: the input's rows less the ids --output already holds."""
    requests = read_requests(options.input)
    results = ResultFile(options.output)
    if options.retry_errors:
        dropped = results.drop_errors()
        if dropped:
            print(f"batch: --retry-errors: {dropped} error rows removed from {options.output}; running them again",
                  file=stream)
    done = {row["id"] for row in results.rows()}
    unknown = done - {r.id for r in requests}
    if unknown:
        raise BatchFileError(f"--output {options.output} holds ids the input does not have (e.g. {sorted(unknown)[0]!r}); "
                             "it belongs to another job: pick another --output")
    todo = [r for r in requests if r.id not in done]
    if done:
        print(f"batch: {len(done)} of {len(requests)} ids already in {options.output}; skipping them", file=stream)
    return todo


def run_job(options: BatchOptions, todo: list[BatchRequest], stream) -> tuple[int, int]:
    """Runs the rows; returns (written, errors). Raises what Ray raises when the job itself fails."""
    import ray
    from tqdm import tqdm

    from llmdoctor.server.batch.batch_worker import BatchWorker
    from llmdoctor.server.replicas.ray_placement import replica_placement, start_ray

    start_ray(options.ray_address, options.replicas)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours below counts rows written, which is what resume cares about
        context.print_on_execution_start = False
        placement, threads = replica_placement(options.settings, options.replicas, options.ray_address is None)
        rows_per_block = options.batch_size * BATCHES_IN_FLIGHT
        dataset = ray.data.from_items(
            [{"id": r.id, "endpoint": r.endpoint, "request": json.dumps(r.body)} for r in todo],
            override_num_blocks=max(1, math.ceil(len(todo) / rows_per_block)),
        ).map_batches(
            BatchWorker,
            fn_constructor_kwargs={"settings": _settings_dict(options.settings), "guidance": options.guidance,
                                   "threads": threads},
            batch_size=options.batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=options.replicas),
            **placement,
        )
        results = ResultFile(options.output)
        written = errors = 0
        with tqdm(total=len(todo), unit="row", file=stream, mininterval=1.0, dynamic_ncols=True,
                  desc="batch") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                rows = [json.loads(text) for text in batch["result"]]
                results.append(rows)  # flushed: what is written survives a kill
                written += len(rows)
                errors += sum("error" in row for row in rows)
                bar.update(len(rows))
        return written, errors
    finally:
        ray.shutdown()


def _settings_dict(settings: ServerSettings) -> dict[str, Any]:
    """What the actors rebuild ServerSettings from (plain values; paths as text)."""
    return json.loads(settings.model_dump_json(include=set(ENGINE_FIELDS), exclude_unset=True))


def run(options: BatchOptions, stream=None) -> int:
    stream = stream or sys.stderr
    try:
        todo = plan(options, stream)
    except BatchFileError as exc:
        print(f"llmdoctor batch: {exc}", file=stream)
        return EXIT_USAGE
    if not todo:
        print(f"batch: every id is already in {options.output}; nothing to do", file=stream)
        return 0
    started = time.monotonic()
    try:
        written, errors = run_job(options, todo, stream)
    except KeyboardInterrupt:
        print(f"batch: interrupted; the rows written so far are in {options.output}. "
              "Run the same command again to continue.", file=stream)
        return EXIT_INTERRUPTED
    except Exception as exc:  # Ray wraps a replica that cannot start (bad --model, adapter) in its own errors
        print(f"llmdoctor batch: the job failed: {replica_error_message(exc)}\n"
              f"rows finished before the failure are in {options.output}; rerun to continue", file=stream)
        return EXIT_FAILED
    seconds = time.monotonic() - started
    print(f"batch: wrote {written} rows to {options.output} ({errors} error rows) in {seconds:.1f} s, "
          f"{written / max(seconds, 1e-9):.2f} rows/s with {options.replicas} replica(s)", file=stream)
    return 0


# ---------------------------------------------------------------- CLI


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    from llmdoctor.server.cli import add_settings_arguments

    parser.add_argument("--input", type=Path, required=True,
                        help="requests, JSONL or .parquet: one chat ('messages') or completion ('prompt') request "
                             "per row with a unique 'id' (OpenAI's batch-file rows work too)")
    parser.add_argument("--output", type=Path, required=True,
                        help="results keyed by id, JSONL or a .parquet folder; rerunning with it resumes")
    parser.add_argument("--replicas", type=int, default=1, help="engine replicas (Ray actors; one GPU each on GPUs)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to run on ('auto', 'ray://HOST:10001'); unset = a local Ray for this job")
    parser.add_argument("--guidance", default=None, metavar="JSON",
                        help='guidance for rows that bring none, e.g. \'{"doctors": {"cheerful": 1.0}}\'')
    parser.add_argument("--batch-size", type=int, default=16, help="rows per Ray Data batch (default 16)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="run the ids whose result in --output is an error row again")
    add_settings_arguments(parser, only=ENGINE_FIELDS)


def options_from_args(args: argparse.Namespace) -> BatchOptions:
    from llmdoctor.server.api.protocol_common import GuidanceSchema
    from llmdoctor.server.cli import settings_from_args
    from llmdoctor.server.config import describe_validation_error

    for flag, value in (("--replicas", args.replicas), ("--batch-size", args.batch_size)):
        if value < 1:
            raise BatchUsageError(f"{flag} must be at least 1, got {value}")
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        raise BatchUsageError(f"invalid settings\n{describe_validation_error(exc)}") from None
    guidance = None
    if args.guidance is not None:
        try:
            guidance = GuidanceSchema.model_validate_json(args.guidance).model_dump()
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            raise BatchUsageError(f"--guidance: {where + ': ' if where else ''}{error['msg']}; "
                                  'expected JSON such as \'{"doctors": {"cheerful": 1.0}}\'') from None
        known = {entry.name for _, entry in startup_doctors(settings)}
        unknown = [d["name"] for d in guidance["doctors"] if d["name"] not in known]
        if unknown:
            raise BatchUsageError(f"--guidance names doctor {unknown[0]!r}, which neither --doctor NAME=PATH nor the "
                                  "shipped doctors load "
                                  f"(given: {', '.join(sorted(known)) or 'none'})")
    return BatchOptions(input=args.input, output=args.output, settings=settings, replicas=args.replicas,
                        ray_address=args.ray_address, guidance=guidance, batch_size=args.batch_size,
                        retry_errors=args.retry_errors)


def run_batch_command(args: argparse.Namespace) -> int:
    try:
        options = options_from_args(args)
    except BatchUsageError as exc:
        print(f"llmdoctor batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from llmdoctor.server.cli import configure_logging

    configure_logging(options.settings.log_level)
    try:
        import ray  # noqa: F401
    except ImportError:
        print('llmdoctor batch: needs Ray; install the extra: pip install "llmdoctor[ray]" '
              "(or deploy/install.sh --ray)", file=sys.stderr)
        return EXIT_USAGE
    return run(options)
