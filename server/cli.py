"""The `llmdoctor` console script: one argparse subcommand per job.

Adding a subcommand (train, eval, batch) = one `Command(...)` entry in COMMANDS: a name, a help
line, a function adding its arguments, and a function running it (returns the exit status).
Heavy imports (torch, uvicorn) happen inside the run functions so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from llmdoctor.server.batch.batch_job import add_batch_arguments, run_batch_command  # Ray loads inside the run
from llmdoctor.server.config import (
    ConfigError,
    ServerSettings,
    describe_validation_error,
    env_name,
    flag_name,
)
from llmdoctor.server.errors import LLMDoctorError
from llmdoctor.server.feedback.db_cli import add_db_arguments, run_db_command  # SQLAlchemy loads inside the run
from llmdoctor.training.cli import add_train_arguments, run_train  # stdlib-only at import
from llmdoctor.training.evaluate import add_eval_arguments, run_eval_command  # torch loads inside the run
from llmdoctor.training.kfold import add_kfold_arguments, run_kfold_command  # torch loads inside the run
from llmdoctor.training.merge import add_merge_arguments, run_merge  # stdlib-only at import
from llmdoctor.training.recipe import add_recipe_arguments, run_recipe_command  # stdlib-only at import

EXIT_USAGE = 2


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------ serve


_LIST_METAVARS = {"doctor": "NAME=PATH", "lora": "NAME=PATH", "adapter_root": "DIR"}
_METAVARS = {"feedback_db": "URL"}  # other flags show their field name in capitals


def add_settings_arguments(parser: argparse.ArgumentParser, only: Sequence[str] | None = None) -> None:
    """One flag per ServerSettings field (`only`: just those); unset flags fall back to the env var,
    then the default."""
    for field, info in ServerSettings.model_fields.items():
        if only is not None and field not in only:
            continue
        default = info.get_default(call_default_factory=True)
        shown = "" if default in (None, []) else f", default {default}"
        text = f"{info.description} (env {env_name(field)}{shown})"
        if info.annotation is bool:  # a switch: --auth-all-routes / --no-auth-all-routes
            parser.add_argument(flag_name(field), dest=field, action=argparse.BooleanOptionalAction, help=text,
                                default=argparse.SUPPRESS)
        elif field in _LIST_METAVARS:
            parser.add_argument(flag_name(field), dest=field, action="append", metavar=_LIST_METAVARS[field],
                                help=text, default=argparse.SUPPRESS)
        else:
            parser.add_argument(flag_name(field), dest=field, metavar=_METAVARS.get(field, field.upper()), help=text,
                                default=argparse.SUPPRESS)


def settings_from_args(args: argparse.Namespace) -> ServerSettings:
    """Flags override env vars; pydantic validates both, with one message style."""
    given = {k: v for k, v in vars(args).items() if k in ServerSettings.model_fields}
    return ServerSettings(**given)


def run_serve(args: argparse.Namespace) -> int:
    started_at = time.monotonic()
    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        print(f"llmdoctor serve: invalid settings\n{describe_validation_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    if settings.replicas is not None:
        return run_serve_replicated(settings)
    if settings.ray_address is not None:
        print("llmdoctor serve: --ray-address needs --replicas N (without it the engine runs in this process)",
              file=sys.stderr)
        return EXIT_USAGE
    from llmdoctor.server.api.server_runner import serve  # imports uvicorn, fastapi, torch
    from llmdoctor.server.model_store import ModelNotFoundError

    try:
        serve(settings, started_at)
    except (ConfigError, ModelNotFoundError, LLMDoctorError) as exc:
        print(f"llmdoctor serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def run_serve_replicated(settings: ServerSettings) -> int:
    """--replicas N: the API on Ray Serve in front of N engine replicas (server/replicas/)."""
    try:
        from llmdoctor.server.replicas.gateway import serve_replicated
    except ImportError:
        print('llmdoctor serve: --replicas needs Ray; install the extra: pip install "llmdoctor[ray]" '
              "(or deploy/install.sh --ray)", file=sys.stderr)
        return EXIT_USAGE
    serve_replicated(settings)
    return 0


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


# ------------------------------------------------------------------ data


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """`llmdoctor data ACTION ...`; each action's flags live beside its job (stdlib-only modules)."""
    from llmdoctor.training.synth import add_synth_arguments

    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    synth_help = "sample K responses per prompt from the patient, rank them with a scorer, write preferences"
    add_synth_arguments(actions.add_parser("synth", help=synth_help, description=synth_help))


def run_data(args: argparse.Namespace) -> int:
    from llmdoctor.training.synth import run_synth  # torch loads inside the job

    return {"synth": run_synth}[args.action](args)


# ------------------------------------------------------------------ explain


def add_explain_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("response", metavar="RESPONSE",
                        help="a saved response (JSON or SSE stream) of a request with guidance.explain; - for stdin")
    parser.add_argument("-o", "--output", type=Path, metavar="OUT.html",
                        help="where the page goes (default: RESPONSE with the suffix .html; for stdin, stdout)")


def run_explain(args: argparse.Namespace) -> int:
    """Read, render, write; a user mistake (no file, not an explained response, unwritable -o) is one line, exit 2."""
    from llmdoctor.server.explain_view import ExplainViewError, load_response, render_html

    stdin = args.response == "-"
    source = "stdin" if stdin else args.response
    try:
        response = load_response(sys.stdin.read() if stdin else Path(args.response).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _explain_error(f"{source}: no such file")
    except IsADirectoryError:
        return _explain_error(f"{source}: is a folder, expected a saved response file")
    except UnicodeDecodeError:
        return _explain_error(f"{source}: not UTF-8 text, expected a saved JSON response or SSE stream")
    except OSError as exc:
        return _explain_error(f"{source}: cannot read ({exc.strerror or exc})")
    except ExplainViewError as exc:
        return _explain_error(f"{source}: {exc}")
    page = render_html(response, title=None if stdin else Path(args.response).name)
    if stdin and args.output is None:
        sys.stdout.write(page)
        return 0
    output = args.output or Path(args.response).with_suffix(".html")
    if not stdin and output.resolve() == Path(args.response).resolve():  # a saved `x.html`, or -o naming the input
        return _explain_error(f"{output}: would overwrite RESPONSE; name another file with -o")
    try:
        output.write_text(page, encoding="utf-8")
    except OSError as exc:
        return _explain_error(f"-o {output}: cannot write ({exc.strerror or exc})")
    print(output)
    return 0


def _explain_error(message: str) -> int:
    print(f"llmdoctor explain: {message}", file=sys.stderr)
    return EXIT_USAGE


COMMANDS: tuple[Command, ...] = (
    Command("serve", "run the OpenAI-compatible server", add_settings_arguments, run_serve),
    Command("data", "build preference data for training (data synth)", add_data_arguments, run_data),
    Command("train", "train a patient adapter (train dpo|gdpo|sft) or a doctor (train rewards, then train doctor)",
            add_train_arguments, run_train),
    Command("merge", "merge a patient adapter into the patient; write a full model", add_merge_arguments, run_merge),
    Command("eval", "the reward/KL frontier: score, KL, diversity and speed of guided settings", add_eval_arguments,
            run_eval_command),
    Command("recipe", "one command, end to end: data, token rewards, a TFPO doctor, a DPO adapter, eval",
            add_recipe_arguments, run_recipe_command),
    Command("kfold", "k folds of a labelled instruction / response file: an SFT adapter per fold, each held-out "
            "fold predicted and scored (beside the patient and guided settings)", add_kfold_arguments,
            run_kfold_command),
    Command("batch", "an offline job: a file of chat/completion requests through engine replicas on Ray Data",
            add_batch_arguments, run_batch_command),
    Command("db", "the feedback database's schema: db upgrade|downgrade|current --db URL", add_db_arguments,
            run_db_command),
    Command("explain", "a saved response of a request with guidance.explain as an HTML page, tokens coloured by "
            "how far the doctors moved them", add_explain_arguments, run_explain),
)


# ------------------------------------------------------------------ entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmdoctor",
        description="Decode-time alignment of a frozen LLM with small doctor models.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sub = subparsers.add_parser(command.name, help=command.help, description=command.help)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
