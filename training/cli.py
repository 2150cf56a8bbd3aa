"""`llmdoctor train dpo|gdpo --config FILE [--dry-run] [--device cuda|cpu] [--resume CHECKPOINT]`.

Exit status: 0 done (or dry run), 2 a config/data/usage error (one message naming the field),
3 out of memory (with advice on what to change), 130 interrupted by Ctrl+C (after saving a
checkpoint and printing the command that resumes it).
Heavy imports (torch, transformers, trl) happen inside `run_train`, so `--help` stays instant.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_OOM = 3
METHODS = ("dpo", "gdpo")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("method", choices=METHODS, help="alignment method (must match alignment.method)")
    parser.add_argument("--config", required=True, type=Path, metavar="FILE", help="training YAML config")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and dataset report; train nothing"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), help="overrides the config's device")
    parser.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="a checkpoint folder to continue from")


def run_train(args: argparse.Namespace) -> int:
    from llmdoctor.training.config import ConfigError, load_config

    prog = f"llmdoctor train {args.method}"
    try:
        config = load_config(args.config)
        _check_method(config, args.method)
        config.device = pick_device(args.device or config.device)
        _check_resume(args.resume)
        if args.dry_run:
            return dry_run(config)
        return _train(config, args, prog)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def pick_device(requested: str) -> str:
    """`requested`, except cuda without CUDA: a warning line, then cpu."""
    import torch

    if requested == "cuda" and not torch.cuda.is_available():
        print("warning: device cuda requested but CUDA is not available; training on the CPU", file=sys.stderr)
        return "cpu"
    return requested


def dry_run(config) -> int:
    """Resolved config as YAML, then the dataset report (token lengths with the model's tokenizer)."""
    import yaml

    from llmdoctor.training.data import load_preferences
    from llmdoctor.training.dpo_training import load_tokenizer, resolve_patient

    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
    tokenizer = load_tokenizer(config, resolve_patient(config))
    a = config.alignment
    group_size = a.group_delay_size if a.method == "gdpo" else None
    data = load_preferences(config.dataset, a.method, tokenizer, group_size=group_size, seed=a.seed)
    print(data.report.summary())
    print("dry run: nothing trained, nothing written")
    return 0


def _train(config, args: argparse.Namespace, prog: str) -> int:
    import torch

    from llmdoctor.training.dpo_training import TrainingInterrupted, train_dpo
    from llmdoctor.training.gdpo_training import train_gdpo

    train = {"dpo": train_dpo, "gdpo": train_gdpo}[args.method]
    try:
        result = train(config, config.device, args.resume)
    except (torch.OutOfMemoryError, MemoryError):
        print(f"{prog}: out of memory on {config.device}\n{oom_advice(config)}", file=sys.stderr)
        return EXIT_OOM
    except TrainingInterrupted as stop:
        if stop.checkpoint is None:
            print(f"{prog}: interrupted before the first step finished; nothing to resume", file=sys.stderr)
        else:
            print(f"{prog}: interrupted at step {stop.step}; checkpoint saved to {stop.checkpoint}", file=sys.stderr)
            print(f"resume with:\n  {resume_command(args, stop.checkpoint)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if isinstance(v, float))
    print(f"adapter saved to {result.output_dir} ({shown})")
    return 0


def oom_advice(config) -> str:
    """What to change in the config, with the current values, when a step does not fit in memory."""
    a = config.alignment
    return "\n".join(
        [
            "to fit, try (in the config):",
            f"  - alignment.batch_size: {a.batch_size} -> {max(1, a.batch_size // 2)}, and "
            f"alignment.gradient_accumulation_steps: {a.gradient_accumulation_steps} -> "
            f"{a.gradient_accumulation_steps * 2} (same effective batch)",
            f"  - dataset.max_length: {config.dataset.max_length} -> {max(64, config.dataset.max_length // 2)} "
            "(longer rows are skipped and reported)",
            f"  - alignment.use_lora: true with a smaller alignment.lora_r (now {a.lora_r}) or fewer target_modules",
            "  - resume from the last checkpoint with --resume <output_dir>/checkpoints/checkpoint-N",
        ]
    )


def resume_command(args: argparse.Namespace, checkpoint: Path) -> str:
    """The exact command line that continues this run from `checkpoint`."""
    words = ["llmdoctor", "train", args.method, "--config", str(Path(args.config).resolve())]
    if args.device:
        words += ["--device", args.device]
    words += ["--resume", str(Path(checkpoint).resolve())]
    return shlex.join(words)


def _check_method(config, method: str) -> None:
    from llmdoctor.training.config import ConfigError

    if config.alignment.method != method:
        raise ConfigError(
            f"alignment.method is {config.alignment.method!r} but `train {method}` was run; "
            f"run `llmdoctor train {config.alignment.method}` or set alignment.method: {method}",
            field="alignment.method",
        )


def _check_resume(resume: Path | None) -> None:
    from llmdoctor.training.config import ConfigError

    if resume is not None and not (resume / "trainer_state.json").is_file():
        raise ConfigError(
            f"--resume {resume}: not a checkpoint folder (expected trainer_state.json inside, "
            "e.g. <output_dir>/checkpoints/checkpoint-100)",
            field="resume",
        )
