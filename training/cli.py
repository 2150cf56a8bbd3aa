"""`llmdoctor train dpo|gdpo|sft|rewards|doctor --config FILE [--dry-run] [--device cuda|cpu] [--resume CHECKPOINT]`.

dpo / gdpo / sft train patient adapters (config.py); rewards computes stage 1's token rewards and doctor
trains a TFPO doctor on them (doctor_config.py). `rewards` resumes by rerunning (no checkpoint).

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

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_OOM = 3
METHODS = ("dpo", "gdpo", "sft", "rewards", "doctor")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "method",
        choices=METHODS,
        help="dpo | gdpo | sft: a patient adapter (must match alignment.method; sft: supervised, on instruction / "
        "response rows); rewards: token-level rewards (LLMdoctor stage 1); doctor: a TFPO doctor from those "
        "rewards (stage 2)",
    )
    parser.add_argument("--config", required=True, type=Path, metavar="FILE", help="training YAML config")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the resolved config and dataset report; train nothing"
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), help="overrides the config's device")
    parser.add_argument("--resume", type=Path, metavar="CHECKPOINT", help="a checkpoint folder to continue from")


def run_train(args: argparse.Namespace) -> int:
    from llmdoctor.training.config import ConfigError

    prog = f"llmdoctor train {args.method}"
    try:
        config = load_job_config(args.method, args.config)
        config.device = pick_device(args.device or config.device)
        _check_resume(args.resume, args.method)
        if args.dry_run:
            return dry_run(config) if args.method in ("dpo", "gdpo", "sft") else _doctor_dry_run(config, args.method)
        if args.method == "rewards":
            return _rewards(config, prog)
        return _train(config, args, prog)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def load_job_config(method: str, path: Path):
    """The config of `method`, validated; ConfigError otherwise."""
    from llmdoctor.training.config import load_config
    from llmdoctor.training.doctor_config import load_doctor_config, load_rewards_config

    if method == "rewards":
        return load_rewards_config(path)
    if method == "doctor":
        return load_doctor_config(path)
    config = load_config(path)
    _check_method(config, method)
    return config


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
    from llmdoctor.training.trainer_runs import load_tokenizer, resolve_patient

    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
    tokenizer = load_tokenizer(config, resolve_patient(config))
    a = config.alignment
    if a.method == "sft":
        from llmdoctor.training.sft_data import load_sft

        print(load_sft(config.dataset, tokenizer, seed=a.seed).report.summary())
        print("dry run: nothing trained, nothing written")
        return 0
    group_size = a.group_delay_size if a.method == "gdpo" else None
    data = load_preferences(config.dataset, a.method, tokenizer, group_size=group_size, seed=a.seed)
    print(data.report.summary())
    print("dry run: nothing trained, nothing written")
    return 0


def _doctor_dry_run(config, method: str) -> int:
    """Stage 1: the resolved config, the faces and the preference report. Stage 2: the config and
    the token-rewards report."""
    import yaml

    from llmdoctor.training.trainer_runs import load_tokenizer, resolve_patient

    print(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip())
    tokenizer = load_tokenizer(config, resolve_patient(config))
    if method == "rewards":
        from llmdoctor.training.data import load_preferences

        faces = config.rewards.faces()
        print(f"positive face: {faces.positive}\nnegative face: {faces.negative}")
        print(load_preferences(config.dataset, "gdpo", tokenizer, group_size=2).report.summary())
    else:
        from llmdoctor.training.tfpo_data import load_reward_data

        print(load_reward_data(config.data, tokenizer, seed=config.doctor.seed).summary())
    print("dry run: nothing trained, nothing written")
    return 0


def _rewards(config, prog: str) -> int:
    from llmdoctor.training.rewards_job import compute_rewards

    try:
        compute_rewards(config)
    except (MemoryError, RuntimeError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(exc):
            raise
        size = config.rewards.batch_size
        print(f"{prog}: out of memory on {config.device}\nto fit, try rewards.batch_size: {size} -> "
              f"{max(1, size // 2)}; rerun the same command to continue where it stopped", file=sys.stderr)
        return EXIT_OOM
    return 0


def _train(config, args: argparse.Namespace, prog: str) -> int:
    import torch

    from llmdoctor.training.dpo_training import train_dpo
    from llmdoctor.training.gdpo_training import train_gdpo
    from llmdoctor.training.sft_training import train_sft
    from llmdoctor.training.tfpo_training import train_doctor
    from llmdoctor.training.trainer_runs import TrainingInterrupted

    train = {"dpo": train_dpo, "gdpo": train_gdpo, "sft": train_sft, "doctor": train_doctor}[args.method]
    try:
        result = train(config, config.device, args.resume)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
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
    if args.method == "doctor":
        print(f"doctor saved to {result.output_dir} ({shown})")
        print(f"serve it with: llmdoctor serve --doctor {config.doctor.dimension}={result.output_dir}")
    elif result.full_model:
        print(f"model saved to {result.output_dir} ({shown})")
        print(f"serve it with: llmdoctor serve --model {result.output_dir}")
    else:
        print(f"adapter saved to {result.output_dir} ({shown})")
        print(f"serve it with: llmdoctor serve --lora aligned={result.output_dir}  (or POST /v1/adapters)")
    return 0


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's out-of-memory has its own type; the CPU allocator raises a plain RuntimeError
    ("DefaultCPUAllocator: can't allocate memory")."""
    import torch

    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)


def oom_advice(config) -> str:
    """What to change in the config, with the current values, when a step does not fit in memory."""
    doctor = hasattr(config, "doctor")
    a, name = (config.doctor, "doctor") if doctor else (config.alignment, "alignment")
    data, data_name = (config.data, "data") if doctor else (config.dataset, "dataset")
    return "\n".join(
        [
            "to fit, try (in the config):",
            f"  - {name}.batch_size: {a.batch_size} -> {max(1, a.batch_size // 2)}, and "
            f"{name}.gradient_accumulation_steps: {a.gradient_accumulation_steps} -> "
            f"{a.gradient_accumulation_steps * 2} (same effective batch)",
            f"  - {data_name}.max_length: {data.max_length} -> {max(64, data.max_length // 2)} "
            "(longer rows are skipped and reported)",
            f"  - a smaller {name}.lora_r (now {a.lora_r}) or fewer {name}.target_modules"
            if getattr(a, "use_lora", True)
            else "  - alignment.use_lora: false -> true (full fine-tuning keeps optimizer state for every weight)",
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


def _check_resume(resume: Path | None, method: str) -> None:
    from llmdoctor.training.config import ConfigError

    if resume is not None and method == "rewards":
        raise ConfigError(
            "--resume: `train rewards` has no checkpoints; rerun the same command and it continues "
            "with the rows not yet done",
            field="resume",
        )
    if resume is not None and not (resume / "trainer_state.json").is_file():
        raise ConfigError(
            f"--resume {resume}: not a checkpoint folder (expected trainer_state.json inside, "
            "e.g. <output_dir>/checkpoints/checkpoint-100)",
            field="resume",
        )
