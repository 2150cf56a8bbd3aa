"""`llmdoctor kfold --config FILE`: k folds of a labelled instruction / response file; per fold an SFT adapter
trained on the other k-1, the held-out fold predicted through the engine with it (and, to compare, by the
bare patient and by the patient guided by named doctors), every prediction scored.

    output_dir/
      folds.json                 which rows each fold holds (fixed by folds.seed; a rerun checks it is the same)
      fold-<i>/train.jsonl       the rows it trains on
      fold-<i>/adapter/          its SFT adapter (a patient adapter the server loads)
      fold-<i>/predictions.jsonl its predictions: fold, setting, row index, label, reference, prediction, correct
      fold-<i>/result.json       its accuracies and peak memory: the fold is done once this exists
      predictions.jsonl          every fold's predictions
      report.json, report.csv    per fold and setting: accuracy; the mean with a 95% interval

A run is resumable fold by fold: a killed run redoes only the fold it was in. Memory stays flat across folds:
each fold trains in this process, then drops the trainer and model before predicting; its adapter is unloaded
after. The engine (and the doctors) load once. Each fold's peak resident memory is printed and recorded.
"""

from __future__ import annotations

import asyncio
import gc
import json
import math
import random
import re
import shutil
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from pydantic import BaseModel

from llmdoctor.training.config import ConfigError, TrainingConfig
from llmdoctor.training.kfold_config import KfoldConfig
from llmdoctor.training.sft_data import SftRow, load_sft

PATIENT, SFT = "patient", "sft"
Z95 = 1.959964  # the normal quantile of a two-sided 95% interval


# ---- folds ---------------------------------------------------------------------------------------------


def split_folds(rows: list[SftRow], k: int, seed: int, stratify: bool) -> list[list[int]]:
    """k disjoint folds of row indices covering every row. Stratified: each label's rows, shuffled, are dealt
    round the folds in turn (continuing where the last label stopped), so every fold holds each label's share
    and the folds' sizes differ by one at most."""
    if k > len(rows):
        raise ConfigError(f"folds.k is {k} but the dataset has {len(rows)} usable rows: each fold needs one at least",
                          field="folds.k")
    rng = random.Random(seed)
    groups: dict[str | None, list[int]] = defaultdict(list)
    for row in rows:
        groups[row.label if stratify else None].append(row.index)
    folds: list[list[int]] = [[] for _ in range(k)]
    turn = 0
    for label in sorted(groups, key=str):
        members = groups[label]
        rng.shuffle(members)
        for index in members:
            folds[turn % k].append(index)
            turn += 1
    return [sorted(fold) for fold in folds]


# ---- scoring -------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """Lower case, inner whitespace collapsed, punctuation and quotes trimmed at both ends."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,;:!?\"'`()[]{}")


def is_correct(metric: str, prediction: str, reference: str) -> bool:
    ours, theirs = normalise(prediction), normalise(reference)
    if metric == "first_token":  # classification: the first word decides
        return bool(ours) and ours.split(" ")[0].strip(".,;:!?\"'") == theirs.split(" ")[0]
    return ours == theirs


class Prediction(BaseModel):
    fold: int
    setting: str
    index: int  # the row's position in the dataset file
    label: str | None
    reference: str
    prediction: str
    correct: bool


class FoldResult(BaseModel):
    fold: int
    rows: int
    accuracy: dict[str, float]  # setting -> share correct
    peak_rss_mb: float
    peak_cuda_mb: float | None = None  # with a GPU: the fold's peak allocated by torch
    train_seconds: float
    predict_seconds: float


class SettingSummary(BaseModel):
    setting: str
    mean_accuracy: float
    interval_95: tuple[float, float]  # normal approximation over the folds' accuracies
    fold_sd: float


class KfoldReport(BaseModel):
    folds: list[FoldResult]
    settings: list[SettingSummary]
    mean_accuracy: float  # the SFT adapters' mean over folds
    k: int
    rows: int
    score: str


def summarise(setting: str, accuracies: list[float]) -> SettingSummary:
    mean = statistics.fmean(accuracies)
    sd = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    half = Z95 * sd / math.sqrt(len(accuracies))
    return SettingSummary(setting=setting, mean_accuracy=round(mean, 6),
                          interval_95=(round(max(0.0, mean - half), 6), round(min(1.0, mean + half), 6)),
                          fold_sd=round(sd, 6))


# ---- the run -------------------------------------------------------------------------------------------


def run_kfold(config: KfoldConfig, log=print) -> KfoldReport:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_sft(config.dataset, seed=config.folds.seed)  # no split here: the folds are the split
    rows = {row.index: row for row in data.rows}
    folds = _fixed_folds(out, list(rows.values()), config)
    log(f"kfold: {len(rows)} rows in {config.folds.k} folds of {', '.join(str(len(f)) for f in folds)} "
        f"({'stratified by ' + config.dataset.label_field if _stratified(config) else 'not stratified'})")
    from llmdoctor.training.kfold_predict import FoldPredictor  # the engine: imported once a run starts

    predictor = FoldPredictor(config)
    results = []
    try:
        predictor.start()  # before any fold trains, so every fold's peak counts the engine alike
        for number, fold in enumerate(folds):
            done = out / f"fold-{number}" / "result.json"
            if done.is_file():
                results.append(FoldResult.model_validate_json(done.read_text()))
                log(f"fold {number}: done before, skipped")
                continue
            results.append(_run_fold(config, number, fold, rows, predictor, log))
    finally:
        predictor.close()
    return _write_report(out, config, results, len(rows), log)


def _stratified(config: KfoldConfig) -> bool:
    return config.folds.stratify and config.dataset.label_field is not None


def _fixed_folds(out: Path, rows: list[SftRow], config: KfoldConfig) -> list[list[int]]:
    """The folds of this output folder: made once; a rerun with other rows or fold settings is refused rather
    than mixing two splits in one report."""
    folds = split_folds(rows, config.folds.k, config.folds.seed, _stratified(config))
    record = out / "folds.json"
    if record.is_file() and json.loads(record.read_text()) != folds:
        raise ConfigError(f"output_dir {out} holds a run with other folds (the data, folds.k, folds.seed or "
                          "stratify changed); use a new output_dir", field="output_dir")
    record.write_text(json.dumps(folds))
    return folds


def _run_fold(config: KfoldConfig, number: int, fold: list[int], rows: dict[int, SftRow], predictor,
              log) -> FoldResult:
    folder = Path(config.output_dir) / f"fold-{number}"
    held = set(fold)
    train_rows = [rows[i] for i in sorted(rows) if i not in held]
    peak = PeakMemory()
    # 1) train on the other folds, in this process; the trainer and its model go before predicting
    started = time.monotonic()
    adapter = _train_fold(config, folder, train_rows)
    trained = time.monotonic()
    release_memory()
    # 2) predict the held-out rows with the fold's adapter, and with every compared setting
    predictions = predictor.predict(number, [rows[i] for i in fold], adapter)
    predicted = time.monotonic()
    release_memory()
    (folder / "predictions.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in predictions))
    by_setting: dict[str, list[bool]] = defaultdict(list)
    for p in predictions:
        by_setting[p.setting].append(p.correct)
    result = FoldResult(fold=number, rows=len(fold),
                        accuracy={s: round(sum(c) / len(c), 6) for s, c in by_setting.items()},
                        peak_rss_mb=round(peak.read_mb(), 1), peak_cuda_mb=peak.read_cuda_mb(), train_seconds=round(trained - started, 1),
                        predict_seconds=round(predicted - trained, 1))
    (folder / "result.json").write_text(result.model_dump_json(indent=1))
    shown = ", ".join(f"{s} {a:.3f}" for s, a in result.accuracy.items())
    cuda = f", CUDA {result.peak_cuda_mb:.0f} MB" if result.peak_cuda_mb is not None else ""
    log(f"fold {number}: {len(fold)} held out; accuracy {shown}; peak RSS {result.peak_rss_mb:.0f} MB{cuda}; "
        f"train {result.train_seconds:.0f} s, predict {result.predict_seconds:.0f} s")
    return result


def _train_fold(config: KfoldConfig, folder: Path, train_rows: list[SftRow]) -> Path:
    from llmdoctor.training.sft_training import train_sft

    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / "train.jsonl"
    d = config.dataset
    with open(data_file, "w", encoding="utf-8") as sink:
        for row in train_rows:
            sink.write(json.dumps({"fold_row": row.index, **_as_record(row, d)}) + "\n")
    adapter = folder / "adapter"
    fold_config = TrainingConfig(
        model=config.model,
        dataset=d.model_copy(update={"path": data_file, "format": "jsonl", "validation_fraction": 0.0}),
        alignment=config.sft.model_copy(update={"output_dir": adapter}),
        device=config.device,
    )
    # a fold killed mid-training starts that fold again: its half-written adapter folder goes
    shutil.rmtree(adapter, ignore_errors=True)
    train_sft(fold_config, config.device)
    return adapter


def _as_record(row: SftRow, d) -> dict:
    record = ({d.messages_field: [*_plain(row.prompt), *_plain(row.response)]} if not isinstance(row.prompt, str)
              else {d.instruction_field: row.prompt, d.response_field: row.response})
    if d.label_field is not None:
        record[d.label_field] = row.label
    return record


def _plain(text) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in text]


def release_memory() -> None:
    """Give back what the fold freed: the trainer's cycles (gc), the CUDA cache, and the C heap's free pages
    (glibc keeps freed blocks in its arenas; without malloc_trim each fold's training leaves them resident)."""
    import ctypes
    import ctypes.util

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc
            pass


def _write_report(out: Path, config: KfoldConfig, results: list[FoldResult], rows: int, log) -> KfoldReport:
    settings = list(results[0].accuracy) if results else []
    summaries = [summarise(s, [r.accuracy[s] for r in results]) for s in settings]
    report = KfoldReport(folds=results, settings=summaries,
                         mean_accuracy=next(s.mean_accuracy for s in summaries if s.setting == SFT),
                         k=config.folds.k, rows=rows, score=config.score)
    (out / "report.json").write_text(report.model_dump_json(indent=1))
    lines = ["fold,setting,rows,accuracy"]
    lines += [f"{r.fold},{s},{r.rows},{r.accuracy[s]}" for r in results for s in settings]
    lines += [f"mean,{s.setting},{rows},{s.mean_accuracy}" for s in summaries]
    (out / "report.csv").write_text("\n".join(lines) + "\n")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as sink:  # every fold's, in fold order
        for result in results:
            sink.write((out / f"fold-{result.fold}" / "predictions.jsonl").read_text())
    log(f"kfold: {config.folds.k} folds, {rows} rows, score {config.score}")
    for s in summaries:
        log(f"  {s.setting:<16} mean accuracy {s.mean_accuracy:.3f}  95% [{s.interval_95[0]:.3f}, "
            f"{s.interval_95[1]:.3f}]  sd over folds {s.fold_sd:.3f}")
    log(f"  report: {out / 'report.json'}, {out / 'report.csv'}; predictions: {out / 'predictions.jsonl'}")
    return report


# ---- memory --------------------------------------------------------------------------------------------


class PeakMemory:
    """This process's peak resident memory since the mark was set (Linux: reset VmHWM via clear_refs)."""

    def __init__(self):
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        except OSError:
            pass  # not Linux: the peak is the process's so far
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def read_cuda_mb() -> float | None:
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None

    @staticmethod
    def read_mb() -> float:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


__all__ = ["KfoldReport", "Prediction", "run_kfold", "split_folds"]


# ---- the command ---------------------------------------------------------------------------------------


def add_kfold_arguments(parser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="FILE", help="k-fold YAML config")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="overrides the config's device")


def run_kfold_command(args) -> int:
    """Exit status 0 done, 2 a config / data error (one message naming the field), 130 Ctrl+C (rerun the same
    command: the folds done stay done)."""
    from llmdoctor.training.cli import EXIT_INTERRUPTED, EXIT_USAGE, pick_device
    from llmdoctor.training.kfold_config import load_kfold_config
    from llmdoctor.training.trainer_runs import TrainingInterrupted

    try:
        config = load_kfold_config(args.config)
        config.device = pick_device(args.device or config.device)
        run_kfold(config)
    except ConfigError as exc:
        print(f"llmdoctor kfold: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, TrainingInterrupted):
        print("llmdoctor kfold: interrupted; rerun the same command to continue (finished folds are kept)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
