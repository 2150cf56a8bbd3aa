"""`llmdoctor eval --config eval.yaml`: the reward/KL frontier.

For a slice of a prompt file, generate with every setting of `eval_settings.plan_settings` (the
bare patient, each doctor alone at each beta, two doctors on a grid, each patient adapter) through
one torch engine, then measure per setting: the task scores (the scorers of `data synth`), the KL
from the patient per generated token (exact, by teacher forcing: `eval_metrics`), distinct-1/2,
tokens/s. Writes `eval.csv`, `samples.jsonl` and `frontier.png` to `output_dir` and prints a table;
with patient adapters, also each doctor against each adapter at the adapter's KL (`eval_compare`:
`compare.csv` and the printed lines).

Library use (e.g. `llmdoctor recipe`): `run_eval(config) -> EvalResult`, with `config` an
`EvalConfig` (built in code, or `load_eval_config(path)`). It raises ConfigError for user mistakes.

Each (prompt, sample) has one seed (`synth.response_seed`), the same in every setting, so the
settings differ only by their guidance. Torch and transformers load inside `run_eval`, so the CLI
builds its parser from this module instantly. Exit status: 0 done, 2 a config error (one line
naming the field), 130 interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmdoctor.training.config import ConfigError
from llmdoctor.training.eval_compare import PromptTotals
from llmdoctor.training.eval_config import EvalConfig, check_inputs, load_eval_config
from llmdoctor.training.eval_report import SettingResult
from llmdoctor.training.eval_settings import Setting, plan_settings

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

Progress = Callable[[str], None]


@dataclass
class Generation:
    """One response: which prompt and sample, its token ids and text."""

    prompt: str
    sample: int
    prompt_ids: tuple[int, ...]
    token_ids: tuple[int, ...]
    text: str


@dataclass
class EvalResult:
    settings: list[SettingResult]
    output_dir: Path
    csv: Path
    plot: Path
    samples: Path
    compare: Path | None = None  # compare.csv; None without a patient adapter and a doctor sweep
    table: str = field(repr=False, default="")  # the settings' table, then the comparison lines

    def by_name(self) -> dict[str, SettingResult]:
        return {r.setting.name: r for r in self.settings}


def stderr_progress(line: str) -> None:
    print(f"eval: {line}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the job


def run_eval(config: EvalConfig, progress: Progress | None = stderr_progress) -> EvalResult:
    """Generate every setting, measure, write the outputs; see the module doc. Raises ConfigError."""
    from llmdoctor.server.model_store import resolve_model
    from llmdoctor.training.scorers import get_scorer

    say = progress or (lambda line: None)
    # 1) inputs: prompts slice, settings, scorers, the patient, adapters that fit it
    check_inputs(config)
    prompts = select_prompts(config)
    doctors, adapters = list(config.doctors), list(config.patient_adapters)
    settings = plan_settings(doctors, adapters, config.betas, config.grid_betas, config.alpha,
                             controls=config.sharpening_controls, mode=config.doctor_mode)
    scorers = {name: get_scorer(name) for name in config.scorers}
    model = resolve_model(None if config.model.path == "embedded" else config.model.path)
    check_adapters(config, model.name)
    say(f"{len(settings)} settings x {len(prompts)} prompts x {config.generation.samples_per_prompt} samples "
        f"on {model.name} ({config.device})")
    # 2) generate every setting with one engine
    generated = asyncio.run(generate_all(config, model, prompts, settings, say))
    # 3) KL by teacher forcing, scores, distinct-n
    results, samples, totals = measure(config, prompts, model.folder, settings, generated, scorers, say)
    # 4) write
    return write_outputs(config, results, samples, totals)


def select_prompts(config: EvalConfig) -> list[str]:
    """The `prompts.skip` .. `skip + limit` slice of the prompt file; ConfigError when it is empty."""
    from llmdoctor.training.synth import SynthError, load_prompts

    try:
        every = load_prompts(config.prompts.path)
    except SynthError as exc:
        raise ConfigError(str(exc).replace("--prompts", "prompts.path"), field="prompts.path") from None
    p = config.prompts
    chosen = every[p.skip : None if p.limit is None else p.skip + p.limit]
    if not chosen:
        raise ConfigError(f"prompts.skip {p.skip} leaves no prompts ({p.path} has {len(every)})", field="prompts.skip")
    return chosen


def check_adapters(config: EvalConfig, model_name: str) -> None:
    """Doctors must be doctor adapters and patient adapters patient ones, both on the patient's base."""
    from llmdoctor.server.adapter_folders import inspect_adapter
    from llmdoctor.server.errors import LLMDoctorError

    for section, kind in (("doctors", "doctor"), ("patient_adapters", "patient")):
        for name, folder in getattr(config, section).items():
            try:
                inspect_adapter(str(folder), [folder], kind, model_name, max_rank=1 << 16)
            except LLMDoctorError as exc:
                raise ConfigError(f"{section}.{name}: {exc}", field=f"{section}.{name}") from None


async def generate_all(config: EvalConfig, model, prompts: list[str], settings: list[Setting], say: Progress):
    """{setting name: (generations, wall seconds)}; one engine, adapters loaded once."""
    from transformers import AutoTokenizer

    from llmdoctor.server.api.prompts import PromptTokenizer
    from llmdoctor.server.engine.torch_engine import TorchEngine

    g = config.generation
    engine = TorchEngine(model, max_batch=g.max_batch, max_queue=max(256, len(prompts) * g.samples_per_prompt),
                         device=config.device)
    await engine.start()
    try:
        for name, folder in config.doctors.items():
            await engine.load_adapter(name, str(folder), "doctor")
        for name, folder in config.patient_adapters.items():
            await engine.load_adapter(name, str(folder), "patient")
        tokenizer = PromptTokenizer(AutoTokenizer.from_pretrained(model.folder), engine.max_model_len)
        encoded = [(p, tuple(tokenizer.encode_chat([{"role": "user", "content": p}], True, False))) for p in prompts]
        generated = {}
        for setting in settings:
            started = time.monotonic()
            jobs = [_generate_one(engine, tokenizer, setting, f"eval-{setting.name}-{k}-{i}", prompt, ids, i, config)
                    for k, (prompt, ids) in enumerate(encoded) for i in range(g.samples_per_prompt)]
            generations = list(await asyncio.gather(*jobs))
            seconds = time.monotonic() - started
            generated[setting.name] = (generations, seconds)
            tokens = sum(len(x.token_ids) for x in generations)
            say(f"generated {setting.name}: {len(generations)} responses, {tokens / max(seconds, 1e-9):.1f} tok/s")
    finally:
        await engine.shutdown(grace_seconds=0)
    return generated


async def _generate_one(engine, tokenizer, setting: Setting, request_id: str, prompt: str, ids: tuple[int, ...],
                        sample: int, config: EvalConfig) -> Generation:
    from llmdoctor.server.engine.protocol import GenerateRequest, SamplingParams
    from llmdoctor.training.synth import response_seed

    g = config.generation
    sampling = SamplingParams(g.max_tokens, g.temperature, top_p=g.top_p, seed=response_seed(g.seed, prompt, sample))
    request = GenerateRequest(request_id, ids, sampling, setting.guidance, setting.adapter)
    tokens: list[int] = []
    async for event in engine.generate(request):
        if event.error:
            raise RuntimeError(f"the engine failed a request of setting {setting.name}: {event.error}")
        tokens += event.token_ids
    text = tokenizer.tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return Generation(prompt, sample, ids, tuple(tokens), text)


def measure(config: EvalConfig, prompts: list[str], model_folder: Path, settings: list[Setting], generated: dict,
            scorers: dict, say: Progress) -> tuple[list[SettingResult], list[dict], dict[str, PromptTotals]]:
    """Per setting: teacher-forced KL per token, mean scores, distinct-1/2, speed; plus one sample
    row per generation and the setting's sums per prompt (for the bootstrap of `eval_compare`)."""
    import torch

    from llmdoctor.training.eval_metrics import TeacherForcer, distinct_n

    adapters = {**config.doctors, **config.patient_adapters}
    forcer = TeacherForcer(model_folder, adapters, config.device)
    results, samples, per_prompt = [], [], {}
    for setting in settings:
        generations, seconds = generated[setting.name]
        kl_sum, token_count, totals, rows = 0.0, 0, dict.fromkeys(scorers, 0.0), []
        for gen in generations:
            kl = forcer.kl_per_token(gen.prompt_ids, gen.token_ids, setting.rule_alpha, setting.doctors,
                                     setting.adapter)
            kl_sum, token_count = kl_sum + float(kl.sum()), token_count + len(gen.token_ids)
            scores = {name: float(score(gen.prompt, gen.text)) for name, score in scorers.items()}
            totals = {name: totals[name] + value for name, value in scores.items()}
            rows.append((gen.prompt, float(kl.sum()), len(gen.token_ids), scores))
            samples.append({"setting": setting.name, "prompt": gen.prompt, "sample": gen.sample,
                            "response": gen.text, "tokens": len(gen.token_ids),
                            "kl_per_token": float(kl.mean()) if len(kl) else 0.0, "scores": scores})
        per_prompt[setting.name] = PromptTotals.collect(prompts, rows)
        n = len(generations)
        texts = [gen.text for gen in generations]
        results.append(SettingResult(
            setting=setting, n=n, mean_tokens=token_count / n, kl_per_token=kl_sum / max(token_count, 1),
            scores={name: total / n for name, total in totals.items()},
            distinct_1=distinct_n(texts, 1), distinct_2=distinct_n(texts, 2),
            tokens_per_s=token_count / max(seconds, 1e-9), seconds=seconds,
        ))
        say(f"measured {setting.name}: KL/token {results[-1].kl_per_token:.4f}")
    del forcer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results, samples, per_prompt


def write_outputs(config: EvalConfig, results: list[SettingResult], samples: list[dict],
                  totals: dict[str, PromptTotals]) -> EvalResult:
    from llmdoctor.training.eval_compare import compare_at_adapter_kl, format_comparisons, write_comparisons
    from llmdoctor.training.eval_report import format_table, plot_frontier, write_csv, write_samples

    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    doctors, adapters = list(config.doctors), list(config.patient_adapters)
    comparisons = compare_at_adapter_kl(results, totals, doctors)
    return EvalResult(
        settings=results,
        output_dir=out,
        csv=write_csv(out / "eval.csv", results, doctors, adapters),
        plot=plot_frontier(out / "frontier.png", results, doctors),
        samples=write_samples(out / "samples.jsonl", samples),
        compare=write_comparisons(out / "compare.csv", comparisons),
        table="\n\n".join(filter(None, [format_table(results), format_comparisons(comparisons)])),
    )


# ---------------------------------------------------------------- CLI


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="FILE", help="evaluation YAML config")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="overrides the config's device")
    parser.add_argument("--output-dir", type=Path, metavar="DIR", help="overrides the config's output_dir")


def run_eval_command(args: argparse.Namespace) -> int:
    """The CLI driver: load the config, run, print the table and where the files went."""
    from llmdoctor.server.errors import LLMDoctorError
    from llmdoctor.server.model_store import ModelNotFoundError

    try:
        config = load_eval_config(args.config)
        if args.output_dir is not None:
            config.output_dir = args.output_dir
        config.device = _pick_device(args.device or config.device)
        result = run_eval(config)
    except (ConfigError, ModelNotFoundError, LLMDoctorError) as exc:  # a bad field, model, or a prompt too long
        print(f"llmdoctor eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("llmdoctor eval: interrupted; nothing written", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(result.table)
    written = [result.csv, result.plot, result.samples, *filter(None, [result.compare])]
    print(f"wrote {', '.join(map(str, written[:-1]))} and {written[-1]}")
    return 0


def _pick_device(requested: str) -> str:
    """`requested`, except cuda without CUDA: a warning line, then cpu."""
    import torch

    if requested.startswith("cuda") and not torch.cuda.is_available():
        print("warning: device cuda requested but CUDA is not available; evaluating on the CPU", file=sys.stderr)
        return "cpu"
    return requested
