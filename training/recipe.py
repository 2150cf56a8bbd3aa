"""`llmdoctor recipe DIMENSION --output DIR [--data FILE]`: the whole LLMdoctor chain in one command.

Stages, each with a progress line, each resumable (rerun the same command after an interruption:
finished stages are skipped, an unfinished one continues where it stopped):

  1. data     `data synth` on the shipped prompts' first --train-prompts  -> DIR/data/preferences.jsonl
              (or the user's own preference file: --data FILE)
  2. rewards  token-level rewards, stage 1                                 -> DIR/data/token_rewards.jsonl
  3. doctor   a TFPO doctor, stage 2                                       -> DIR/doctor-<dimension>/
  4. dpo      a DPO patient adapter on the same preferences, to compare    -> DIR/dpo-<dimension>/
  5. eval     the last --eval-prompts shipped prompts (never trained on): the patient, the doctor at
              each beta, the DPO adapter (and a grid with --with-doctor)   -> DIR/eval/eval.csv, frontier.png

DIR/configs/ gets the config each stage ran with (rerun or change any stage by hand with them);
DIR/recipe.json records which stages are done and how long each took. The defaults are sized for
a 2-core CPU (the whole chain in under 30 minutes there); --device cuda scales them up.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class Dimension:
    scorer: str  # how `data synth` ranks responses, and the score eval reports first (eval.csv's score_<scorer>)
    faces: str  # the faces (faces.py) stage 1 contrasts
    # RecipeOptions this dimension needs other than the defaults. Conciseness: the patient's answers
    # run to ~250 tokens and rarely end by themselves, so its pairs come from sentence cuts (below);
    # 96 tokens leave room to see an answer run on. Fewer prompts keep it near 30 min on 2 cores.
    defaults: dict = field(default_factory=dict)
    # data synth --sentence-cuts: pairs that differ only in where the answer stops (synth.py)
    sentence_cuts: bool = False
    # the doctor's reward_scale (doctor_config.py): how many nats of tilt a rewarded token can earn. Ratio
    # mode's beta scales the tilt at decode time, but not the noise-to-signal of what the doctor learned.
    reward_scale: float = 1.0
    # the DPO adapter's alignment settings other than the recipe's (config.py's AlignmentConfig fields)
    dpo: dict = field(default_factory=dict)


DIMENSIONS = {
    "positivity": Dimension(scorer="sentiment", faces="positivity"),
    "conciseness": Dimension(scorer="length", faces="conciseness", defaults={
        "max_tokens": 96, "train_prompts": 96, "eval_prompts": 32, "betas": (0.25, 0.5, 1.0, 2.0)},
        # its one decision (stop here) gets a tilt of about reward_scale nats: at 1 the doctor needed beta 8
        # and KL 5.8 to reach one sentence, at 8 beta 1 gets there at KL 1.5 (same pairs; 3 was in between)
        reward_scale=8.0,
        # Sentence-cut pairs differ only in where the answer stops, a preference with one right answer:
        # sigmoid DPO drives that margin without bound and stopped at the first token (KL 9.3, empty
        # answers, nothing to compare with). IPO (Azar et al. 2023) targets a finite margin: one-sentence
        # answers at KL 1.2, inside the doctor's sweep.
        sentence_cuts=True, dpo={"loss_type": "ipo"}),
}
STAGES = ("data", "rewards", "doctor", "dpo", "eval")


class RecipeError(ValueError):
    """A usage mistake; the message names the flag."""


@dataclass
class RecipeOptions:
    dimension: str
    output: Path
    data: Path | None = None  # the user's preference file instead of data synth
    with_doctors: dict[str, Path] = field(default_factory=dict)  # more doctors for the eval grid
    device: str = "cpu"
    train_prompts: int = 128
    eval_prompts: int = 48
    k: int = 4
    max_tokens: int = 48
    epochs: int = 2
    # ratio-mode betas (the eval's doctor_mode): the doctor's tilt from the patient, times beta. The
    # positivity doctor reaches the DPO adapter's KL (~0.5 nats/token) near beta 5, so the sweep spans it.
    betas: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0)
    samples_per_prompt: int = 1  # eval: responses per held-out prompt (more = less noisy scores)
    seed: int = 0
    # the LoRA of the doctor and of the DPO adapter (the same for both, so the comparison is fair);
    # lora_alpha is twice the rank, so the update's scale does not change with it
    lora_rank: int = 16
    target_modules: tuple[str, ...] | None = None  # None = every linear layer
    save_dtype: str = "float32"  # "bfloat16" halves the folders (the doctors shipped in the package)

    @classmethod
    def for_dimension(cls, dimension: str, output: Path, **given) -> RecipeOptions:
        """Options with the dimension's own defaults, then what the user gave (None = not given)."""
        chosen = DIMENSIONS[dimension].defaults if dimension in DIMENSIONS else {}
        return cls(dimension, output, **{**chosen, **{k: v for k, v in given.items() if v is not None}})


# ---- the configs of each stage -----------------------------------------------------------------------


def stage_configs(o: RecipeOptions) -> dict:
    """Every stage's inputs, as the objects the stages take (their YAML lands in DIR/configs)."""
    from llmdoctor.training.config import TrainingConfig
    from llmdoctor.training.doctor_config import ALL_LINEAR, DoctorConfig, RewardsConfig
    from llmdoctor.training.eval_config import EvalConfig
    from llmdoctor.training.synth import PROMPTS_FILE, SynthOptions, load_prompts

    d, out = DIMENSIONS[o.dimension], o.output.resolve()
    preferences = o.data.resolve() if o.data else out / "data" / "preferences.jsonl"
    rewards_file = out / "data" / "token_rewards.jsonl"
    doctor_dir, dpo_dir = out / f"doctor-{o.dimension}", out / f"dpo-{o.dimension}"
    shipped = len(load_prompts(PROMPTS_FILE))
    # the doctor and the DPO adapter get the same LoRA (the doctor's defaults) and the same steps
    run = {"num_epochs": o.epochs, "batch_size": 4, "save_steps": 10, "save_total_limit": 2, "seed": o.seed,
           "lora_r": o.lora_rank, "lora_alpha": 2 * o.lora_rank, "target_modules": list(o.target_modules or ALL_LINEAR),
           "save_dtype": o.save_dtype}
    return {
        "data": SynthOptions(prompts=PROMPTS_FILE, output=preferences, scorer=d.scorer, k=o.k, max_tokens=o.max_tokens,
                             seed=o.seed, limit=o.train_prompts, sentence_cuts=d.sentence_cuts),
        "rewards": RewardsConfig.model_validate({
            "dataset": {"path": str(preferences)}, "device": o.device,
            "rewards": {"dimension": d.faces, "output": str(rewards_file), "batch_size": 8},
        }),
        "doctor": DoctorConfig.model_validate({
            "data": {"path": str(rewards_file)}, "device": o.device,
            "doctor": {**run, "dimension": o.dimension, "output_dir": str(doctor_dir), "learning_rate": 5e-4,
                       "reward_scale": d.reward_scale},
        }),
        "dpo": TrainingConfig.model_validate({
            "dataset": {"path": str(preferences)}, "device": o.device,
            "alignment": {**run, "method": "dpo", "output_dir": str(dpo_dir), "learning_rate": 5e-4, "beta": 0.1,
                          **d.dpo},
        }),
        "eval": EvalConfig.model_validate({
            "prompts": {"path": str(PROMPTS_FILE), "skip": shipped - o.eval_prompts, "limit": o.eval_prompts},
            "doctors": {o.dimension: str(doctor_dir), **{k: str(v) for k, v in o.with_doctors.items()}},
            "patient_adapters": {"dpo": str(dpo_dir)},
            "betas": list(o.betas), "grid_betas": [0.0, 0.5, 2.0] if o.with_doctors else [],
            "sharpening_controls": True, "doctor_mode": "ratio",
            "scorers": ["sentiment", "length"], "output_dir": str(out / "eval"), "device": o.device,
            "generation": {"max_tokens": o.max_tokens, "temperature": 1.0, "seed": o.seed + 1,
                           "samples_per_prompt": o.samples_per_prompt},
        }),
    }


def check_options(o: RecipeOptions) -> None:
    from llmdoctor.training.synth import PROMPTS_FILE, load_prompts

    if o.dimension not in DIMENSIONS:
        raise RecipeError(f"DIMENSION {o.dimension!r} has no recipe; known: {', '.join(DIMENSIONS)}")
    if o.data is not None and not o.data.is_file():
        raise RecipeError(f"--data {o.data}: no such file")
    shipped = len(load_prompts(PROMPTS_FILE))
    if o.train_prompts + o.eval_prompts > shipped:
        raise RecipeError(
            f"--train-prompts {o.train_prompts} + --eval-prompts {o.eval_prompts} exceed the {shipped} shipped "
            "prompts; the eval prompts must stay out of training"
        )
    for name, folder in o.with_doctors.items():
        if name == o.dimension or not folder.is_dir():
            raise RecipeError(f"--with-doctor {name}={folder}: expected another dimension's doctor folder")
    from llmdoctor.training.doctor_config import ALL_LINEAR

    unknown = [m for m in o.target_modules or () if m not in ALL_LINEAR]
    if unknown or (o.target_modules is not None and not o.target_modules):
        raise RecipeError(f"--target-modules: expected names among {','.join(ALL_LINEAR)}, got "
                          f"{','.join(o.target_modules or ()) or 'nothing'}")


# ---- the stages --------------------------------------------------------------------------------------


def run_stage(name: str, config, say) -> str:
    """Run one stage to the end; return a one-line result."""
    if name == "data":
        from llmdoctor.training import synth

        status = synth.run(config)
        if status == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        if status != 0:
            raise RecipeError("data synth failed (see above)")
        rows = len(config.output.read_text(encoding="utf-8").splitlines())
        return f"{rows} preference rows in {config.output}"
    if name == "rewards":
        from llmdoctor.training.rewards_job import compute_rewards, format_summary

        result = compute_rewards(config)
        return f"{result.rows} rows, {format_summary(result.summary)}"
    if name in ("doctor", "dpo"):
        section = config.doctor if name == "doctor" else config.alignment
        result = _train(name, config, latest_checkpoint(Path(section.output_dir)))
        m = result.metrics
        return f"{result.output_dir}: reward accuracy {m['reward_accuracy']:.2f}, margin {m['reward_margin']:.3f}"
    from llmdoctor.training.evaluate import run_eval

    result = run_eval(config, progress=lambda line: say(f"  eval: {line}"))
    return f"{result.csv} and {result.plot}\n{result.table}"


def _train(name: str, config, resume: Path | None):
    from llmdoctor.training.dpo_training import train_dpo
    from llmdoctor.training.tfpo_training import train_doctor
    from llmdoctor.training.trainer_runs import TrainingInterrupted

    try:
        return (train_doctor if name == "doctor" else train_dpo)(config, config.device, resume)
    except TrainingInterrupted:
        raise KeyboardInterrupt from None


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest HF checkpoint of an unfinished run, to resume from; None to start fresh."""
    folders = [p for p in (output_dir / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(folders, key=lambda p: int(p.name.rsplit("-", 1)[1]), default=None)


def run_recipe(o: RecipeOptions, stream=None) -> int:
    """All stages not yet done, in order. Returns the exit status."""
    stream = stream or sys.stderr

    def say(line: str) -> None:
        print(line, file=stream, flush=True)

    # 1) options and the stage configs, written where the user can reuse them
    check_options(o)
    configs = stage_configs(o)
    state_file = o.output / "recipe.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {"stages": {}}
    write_configs(o.output / "configs", configs)
    stages = [s for s in STAGES if not (s == "data" and o.data)]
    # 2) each stage not done yet
    started = time.monotonic()
    for number, name in enumerate(stages, 1):
        if state["stages"].get(name, {}).get("done"):
            say(f"recipe [{number}/{len(stages)}] {name}: done before, skipped")
            continue
        say(f"recipe [{number}/{len(stages)}] {name} ...")
        stage_start = time.monotonic()
        try:
            result = run_stage(name, configs[name], say)
        except KeyboardInterrupt:
            say(f"recipe: interrupted in stage {name}; run the same command again to continue from there")
            return EXIT_INTERRUPTED
        seconds = round(time.monotonic() - stage_start, 1)
        state["stages"][name] = {"done": True, "seconds": seconds}
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({**state, "options": _jsonable(o)}, indent=2) + "\n")
        say(f"recipe [{number}/{len(stages)}] {name}: {result} ({seconds:.0f} s)")
    record_in_doctor(o, configs)
    say(f"recipe: done in {time.monotonic() - started:.0f} s; {o.output} holds the doctor, the DPO adapter, the "
        f"data and eval/ (eval.csv, frontier.png)")
    return 0


# ---- what the doctor's llmdoctor.json records of its making --------------------------------------------


def record_in_doctor(o: RecipeOptions, configs: dict) -> dict:
    """Add `recipe` to the doctor's llmdoctor.json: the command, the data, the seed and its eval row.

    The eval row is the doctor's at the beta whose KL per token is nearest the DPO adapter's (the
    equal-KL comparison the product rests on), beside the patient's and the DPO adapter's rows; that
    beta is the one to start from. The server shows this on /v1/models.
    """
    import csv
    import hashlib

    from llmdoctor.server.adapter_folders import METADATA_FILE

    doctor_file = Path(configs["doctor"].doctor.output_dir) / METADATA_FILE
    preferences = Path(configs["dpo"].dataset.path)
    score = f"score_{DIMENSIONS[o.dimension].scorer}"
    rows = list(csv.DictReader((Path(configs["eval"].output_dir) / "eval.csv").open(encoding="utf-8")))

    def row(r: dict) -> dict:
        return {"kl_per_token": float(r["kl_per_token"]), "score": float(r[score]), "mean_tokens": float(r["mean_tokens"])}

    patient = next(r for r in rows if r["kind"] == "patient")
    dpo = next(r for r in rows if r["kind"] == "adapter")
    doctors = [r for r in rows if r["kind"] == "doctor" and float(r[f"beta_{o.dimension}"]) > 0]
    nearest = min(doctors, key=lambda r: abs(float(r["kl_per_token"]) - float(dpo["kl_per_token"])))
    g = configs["eval"].generation
    recipe = {
        "command": command_line(o),
        "seed": o.seed,
        "data": {
            "source": f"--data {o.data}" if o.data else (
                f"data synth --scorer {DIMENSIONS[o.dimension].scorer} on the first {o.train_prompts} shipped prompts, "
                f"k {o.k}, {o.max_tokens} tokens"),
            "file": preferences.name,
            # a user's --data may be a datasets folder: no one file to hash
            "sha256": hashlib.sha256(preferences.read_bytes()).hexdigest() if preferences.is_file() else None,
        },
        "eval": {
            "prompts": f"the last {o.eval_prompts} shipped prompts (held out)", "score": score,
            "max_tokens": g.max_tokens, "temperature": g.temperature, "doctor_mode": "ratio",
            "beta": float(nearest[f"beta_{o.dimension}"]), "doctor": row(nearest), "patient": row(patient),
            "dpo": row(dpo),
        },
    }
    meta = json.loads(doctor_file.read_text(encoding="utf-8"))
    tmp = doctor_file.with_name(f".{METADATA_FILE}.tmp")
    tmp.write_text(json.dumps({**meta, "recipe": recipe}, indent=2) + "\n", encoding="utf-8")
    tmp.replace(doctor_file)
    return recipe


def command_line(o: RecipeOptions) -> str:
    """The `llmdoctor recipe` command that makes these options again (every flag spelled out)."""
    import shlex

    args = ["llmdoctor", "recipe", o.dimension, "--output", str(o.output)]
    if o.data:
        args += ["--data", str(o.data)]
    for name, folder in o.with_doctors.items():
        args += ["--with-doctor", f"{name}={folder}"]
    args += ["--device", o.device, "--train-prompts", str(o.train_prompts), "--eval-prompts", str(o.eval_prompts),
             "--epochs", str(o.epochs), "--k", str(o.k), "--max-tokens", str(o.max_tokens),
             "--betas", ",".join(f"{b:g}" for b in o.betas), "--samples-per-prompt", str(o.samples_per_prompt),
             "--seed", str(o.seed), "--lora-rank", str(o.lora_rank), "--save-dtype", o.save_dtype]
    if o.target_modules:
        args += ["--target-modules", ",".join(o.target_modules)]
    return shlex.join(args)


def write_configs(folder: Path, configs: dict) -> None:
    """Each stage's config as YAML (data synth's as its options)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    for name, config in configs.items():
        data = _jsonable(config) if name == "data" else config.model_dump(mode="json", exclude_none=True)
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def _jsonable(obj) -> dict:
    return json.loads(json.dumps(asdict(obj), default=str))


# ---- CLI ---------------------------------------------------------------------------------------------


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dimension", metavar="DIMENSION",
                        help=f"what the doctor steers toward: {', '.join(DIMENSIONS)}")
    parser.add_argument("--output", required=True, type=Path, metavar="DIR",
                        help="folder for everything the recipe makes")
    parser.add_argument("--data", type=Path, metavar="FILE", help="your preference file instead of data synth's")
    parser.add_argument("--with-doctor", action="append", default=[], metavar="NAME=DIR",
                        help="another dimension's doctor, for a two-doctor beta grid in the eval (repeatable)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--train-prompts", type=int, help="shipped prompts data synth trains on (default 128; "
                        "conciseness 96)")
    parser.add_argument("--eval-prompts", type=int, help="held-out shipped prompts the eval uses (default 48; "
                        "conciseness 32)")
    parser.add_argument("--epochs", type=int, help="epochs of the doctor and the DPO adapter (default 2)")
    parser.add_argument("--k", type=int, help="responses data synth samples per prompt (default 4)")
    parser.add_argument("--max-tokens", type=int, help="tokens per response, in data synth and eval (default 48; "
                        "conciseness 96)")
    parser.add_argument("--betas", metavar="B,B,...", help="doctor betas the eval sweeps (default 1,2,4,6; "
                        "conciseness 0.25,0.5,1,2)")
    parser.add_argument("--samples-per-prompt", type=int, help="eval responses per held-out prompt (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lora-rank", type=int, help="LoRA rank of the doctor and the DPO adapter (default 16)")
    parser.add_argument("--target-modules", metavar="M,M,...", help="layers the LoRAs adapt (default every linear "
                        "layer: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)")
    parser.add_argument("--save-dtype", choices=("float32", "bfloat16"), help="the saved adapters' weights "
                        "(default float32; bfloat16 halves them)")


def options_from_args(args: argparse.Namespace) -> RecipeOptions:
    with_doctors = {}
    for entry in args.with_doctor:
        name, sep, folder = entry.partition("=")
        if not sep or not name or not folder:
            raise RecipeError(f"--with-doctor {entry!r}: expected NAME=DIR")
        with_doctors[name] = Path(folder)
    for flag, value, least in (("--train-prompts", args.train_prompts, 1), ("--eval-prompts", args.eval_prompts, 1),
                               ("--epochs", args.epochs, 1), ("--max-tokens", args.max_tokens, 1), ("--k", args.k, 2),
                               ("--samples-per-prompt", args.samples_per_prompt, 1), ("--lora-rank", args.lora_rank, 1)):
        if value is not None and value < least:
            raise RecipeError(f"{flag} must be at least {least}, got {value}")
    betas = None
    if args.betas is not None:
        try:
            betas = tuple(float(b) for b in args.betas.split(","))
        except ValueError:
            raise RecipeError(f"--betas {args.betas!r}: expected numbers separated by commas, e.g. 0.5,1,2") from None
    return RecipeOptions.for_dimension(
        args.dimension, args.output, data=args.data, with_doctors=with_doctors, device=args.device,
        train_prompts=args.train_prompts, eval_prompts=args.eval_prompts, k=args.k, max_tokens=args.max_tokens,
        epochs=args.epochs, betas=betas, samples_per_prompt=args.samples_per_prompt, seed=args.seed,
        lora_rank=args.lora_rank, save_dtype=args.save_dtype,
        target_modules=None if args.target_modules is None else tuple(m.strip() for m in args.target_modules.split(",")
                                                                      if m.strip()))


def run_recipe_command(args: argparse.Namespace) -> int:
    from llmdoctor.training.config import ConfigError

    from llmdoctor.training.cli import pick_device

    try:
        options = options_from_args(args)
        options.device = pick_device(options.device)
        return run_recipe(options)
    except (RecipeError, ConfigError) as exc:
        print(f"llmdoctor recipe: {exc}", file=sys.stderr)
        return EXIT_USAGE
