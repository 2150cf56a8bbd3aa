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

import gc
import json
import math
import random
import shutil
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

from pydantic import BaseModel, model_validator

from llmdoctor.training.config import ConfigError, TrainingConfig
from llmdoctor.training.kfold_config import KfoldConfig
from llmdoctor.training.kfold_scoring import PredictionScorer, reference_text
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


# ---- the report ----------------------------------------------------------------------------------------


class Answer(BaseModel):
    """What an engine answered: a setting's text for one held-out row."""

    setting: str
    index: int
    text: str
    error: str | None = None  # the request failed (the API's error message); text is then empty


class Prediction(BaseModel):
    fold: int
    setting: str
    index: int  # the row's position in the dataset file
    label: str | None
    reference: str
    prediction: str
    correct: bool | None  # exact_match / first_token; None with a scorer
    score: float  # 1 / 0 for exact_match and first_token; the scorer's value otherwise
    error: str | None = None  # the request failed: scored as an empty answer


class FoldResult(BaseModel):
    fold: int
    rows: int
    scores: dict[str, float]  # setting -> mean score over the fold's rows (the share correct for correctness metrics)
    accuracy: dict[str, float] | None  # the same for exact_match / first_token; None with a scorer
    errors: int = 0  # requests that failed (each prediction says why), scored as empty answers
    peak_rss_mb: float  # the fold's peak resident memory: the larger of training's and prediction's
    train_peak_rss_mb: float | None = None
    predict_peak_rss_mb: float | None = None
    rss_after_mb: float | None = None  # resident once the fold is done and released: growth here is a leak
    replica_peak_rss_mb: list[float] | None = None  # predict.replicas > 1: each Ray replica's peak while predicting
    peak_cuda_mb: float | None = None  # with a GPU: the fold's peak allocated by torch
    train_seconds: float
    predict_seconds: float

    @model_validator(mode="before")
    @classmethod
    def _scores_of_older_runs(cls, data):
        """A result.json written before scorers existed holds accuracy only."""
        if isinstance(data, dict) and "scores" not in data and data.get("accuracy"):
            data = {**data, "scores": data["accuracy"]}
        return data


class SettingSummary(BaseModel):
    setting: str
    mean_score: float
    mean_accuracy: float | None  # = mean_score for exact_match / first_token
    interval_95: tuple[float, float]  # normal approximation over the folds' scores
    fold_sd: float


class KfoldReport(BaseModel):
    folds: list[FoldResult]
    settings: list[SettingSummary]
    mean_accuracy: float | None  # the SFT adapters' mean accuracy over folds (None with a scorer)
    mean_score: float  # the SFT adapters' mean score over folds
    k: int
    rows: int
    score: str


def summarise(setting: str, scores: list[float], correctness: bool) -> SettingSummary:
    mean = statistics.fmean(scores)
    sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
    half = Z95 * sd / math.sqrt(len(scores))
    low, high = mean - half, mean + half
    if correctness:  # a share: the interval stays within [0, 1]
        low, high = max(0.0, low), min(1.0, high)
    return SettingSummary(setting=setting, mean_score=round(mean, 6), mean_accuracy=round(mean, 6) if correctness
                          else None, interval_95=(round(low, 6), round(high, 6)), fold_sd=round(sd, 6))


# ---- the run -------------------------------------------------------------------------------------------


def run_kfold(config: KfoldConfig, log=print) -> KfoldReport:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_sft(config.dataset, seed=config.folds.seed)  # no split here: the folds are the split
    rows = {row.index: row for row in data.rows}
    folds = _fixed_folds(out, list(rows.values()), config)
    log(f"kfold: {len(rows)} rows in {config.folds.k} folds of {', '.join(str(len(f)) for f in folds)} "
        f"({'stratified by ' + config.dataset.label_field if _stratified(config) else 'not stratified'})")
    from llmdoctor.training.kfold_predict import fold_predictor  # the engine: imported once a run starts

    pin_mmap_threshold()
    predictor = fold_predictor(config)
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
    train_peak, train_cuda = peak.read_mb(), peak.read_cuda_mb()
    release_memory()
    # 2) predict the held-out rows with the fold's adapter, and with every compared setting
    peak.reset()
    answers = predictor.predict(number, [rows[i] for i in fold], adapter)
    predicted = time.monotonic()
    predict_peak, predict_cuda = peak.read_mb(), peak.read_cuda_mb()
    release_memory()
    scorer = PredictionScorer(config.score)
    predictions = [_scored(number, rows[a.index], a, scorer) for a in answers]
    (folder / "predictions.jsonl").write_text("".join(p.model_dump_json() + "\n" for p in predictions))
    by_setting: dict[str, list[float]] = defaultdict(list)
    for p in predictions:
        by_setting[p.setting].append(p.score)
    scores = {s: round(statistics.fmean(values), 6) for s, values in by_setting.items()}
    result = FoldResult(fold=number, rows=len(fold), scores=scores,
                        accuracy=scores if scorer.correctness else None,
                        errors=sum(p.error is not None for p in predictions),
                        peak_rss_mb=round(max(train_peak, predict_peak), 1), train_peak_rss_mb=round(train_peak, 1),
                        predict_peak_rss_mb=round(predict_peak, 1), rss_after_mb=round(PeakMemory.current_mb(), 1),
                        replica_peak_rss_mb=predictor.replica_peaks_mb,
                        peak_cuda_mb=None if train_cuda is None else max(train_cuda, predict_cuda),
                        train_seconds=round(trained - started, 1), predict_seconds=round(predicted - trained, 1))
    (folder / "result.json").write_text(result.model_dump_json(indent=1))
    shown = ", ".join(f"{s} {a:.3f}" for s, a in result.scores.items())
    extra = f", CUDA {result.peak_cuda_mb:.0f} MB" if result.peak_cuda_mb is not None else ""
    if result.errors:
        extra += f"; {result.errors} requests failed (see predictions.jsonl)"
    if result.replica_peak_rss_mb:
        extra += f"; replicas' peak RSS {', '.join(f'{mb:.0f}' for mb in result.replica_peak_rss_mb)} MB"
    measure = "accuracy" if scorer.correctness else f"mean {config.score}"
    log(f"fold {number}: {len(fold)} held out; {measure} {shown}; peak RSS {result.peak_rss_mb:.0f} MB (train "
        f"{train_peak:.0f}, predict {predict_peak:.0f}; {result.rss_after_mb:.0f} after){extra}; "
        f"train {result.train_seconds:.0f} s, predict {result.predict_seconds:.0f} s")
    return result


def _scored(fold: int, row: SftRow, answer: Answer, scorer: PredictionScorer) -> Prediction:
    correct, score = scorer(row, answer.text)
    return Prediction(fold=fold, setting=answer.setting, index=row.index, label=row.label,
                      reference=reference_text(row), prediction=answer.text, correct=correct, score=score,
                      error=answer.error)


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


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's default starting value


def pin_mmap_threshold() -> None:
    """Keep glibc's mmap threshold at its default instead of letting it grow. glibc raises the threshold each
    time a large mmapped block is freed (up to 32 MB), after which tensors of that size come from the heap, where
    freed memory stays resident and fragments. Pinned, every large tensor is mapped on its own and goes back to
    the system when freed: each fold's peaks drop by ~0.5 GB on the embedded model (bench_kfold_memory.py)."""
    libc = _glibc()
    if libc is not None:
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _glibc():
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_memory() -> None:
    """Give back what the fold freed: the trainer's cycles (gc), the CUDA cache, and the C heap's free pages
    (glibc keeps freed blocks in its arenas; without malloc_trim each fold's training leaves them resident)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _write_report(out: Path, config: KfoldConfig, results: list[FoldResult], rows: int, log) -> KfoldReport:
    correctness = PredictionScorer(config.score).correctness
    settings = list(results[0].scores) if results else []
    summaries = [summarise(s, [r.scores[s] for r in results], correctness) for s in settings]
    sft = next(s for s in summaries if s.setting == SFT)
    report = KfoldReport(folds=results, settings=summaries, mean_accuracy=sft.mean_accuracy,
                         mean_score=sft.mean_score, k=config.folds.k, rows=rows, score=config.score)
    (out / "report.json").write_text(report.model_dump_json(indent=1))
    column = "accuracy" if correctness else "mean_score"
    lines = [f"fold,setting,rows,{column}"]
    lines += [f"{r.fold},{s},{r.rows},{r.scores[s]}" for r in results for s in settings]
    lines += [f"mean,{s.setting},{rows},{s.mean_score}" for s in summaries]
    (out / "report.csv").write_text("\n".join(lines) + "\n")
    with open(out / "predictions.jsonl", "w", encoding="utf-8") as sink:  # every fold's, in fold order
        for result in results:
            sink.write((out / f"fold-{result.fold}" / "predictions.jsonl").read_text())
    log(f"kfold: {config.folds.k} folds, {rows} rows, score {config.score}")
    named = "mean accuracy" if correctness else f"mean {config.score}"
    for s in summaries:
        log(f"  {s.setting:<16} {named} {s.mean_score:.3f}  95% [{s.interval_95[0]:.3f}, "
            f"{s.interval_95[1]:.3f}]  sd over folds {s.fold_sd:.3f}")
    log(f"  report: {out / 'report.json'}, {out / 'report.csv'}; predictions: {out / 'predictions.jsonl'}")
    return report


# ---- memory --------------------------------------------------------------------------------------------


class PeakMemory:
    """This process's peak resident memory since the mark was set (Linux: reset VmHWM via clear_refs)."""

    def __init__(self):
        self.reset()

    @staticmethod
    def reset() -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (VmHWM) to the current RSS
        except OSError:
            pass  # not Linux: the peak is the process's so far
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    @staticmethod
    def current_mb() -> float:
        return _status_mb("VmRSS:") or PeakMemory.read_mb()

    @staticmethod
    def read_cuda_mb() -> float | None:
        import torch

        return round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None

    @staticmethod
    def read_mb() -> float:
        peak = _status_mb("VmHWM:")
        if peak is not None:
            return peak
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status in MB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


__all__ = ["KfoldReport", "Prediction", "run_kfold", "split_folds"]


# ---- the command ---------------------------------------------------------------------------------------


def add_kfold_arguments(parser) -> None:
    parser.add_argument("--config", required=True, type=Path, metavar="FILE", help="k-fold YAML config")
    parser.add_argument("--device", choices=("cuda", "cpu"), help="overrides the config's device")
    parser.add_argument("--replicas", type=int, metavar="N",
                        help="predict on N engine replicas on Ray (overrides predict.replicas; one GPU each on GPUs)")
    parser.add_argument("--ray-address", metavar="ADDR",
                        help="the Ray cluster for the replicas ('auto', 'ray://HOST:10001'; overrides "
                             "predict.ray_address); unset = a local Ray for the run")


def run_kfold_command(args) -> int:
    """Exit status 0 done, 2 a config / data error (one message naming the field), 130 Ctrl+C (rerun the same
    command: the folds done stay done)."""
    from llmdoctor.training.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, pick_device
    from llmdoctor.training.kfold_config import load_kfold_config
    from llmdoctor.training.kfold_predict import ReplicaError
    from llmdoctor.training.trainer_runs import TrainingInterrupted

    try:
        if args.replicas is not None and args.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {args.replicas}", field="predict.replicas")
        config = load_kfold_config(args.config)
        config.device = pick_device(args.device or config.device)
        if args.replicas is not None:
            config.predict.replicas = args.replicas
        if args.ray_address is not None:
            config.predict.ray_address = args.ray_address
        run_kfold(config)
    except ConfigError as exc:
        print(f"llmdoctor kfold: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ReplicaError as exc:
        print(f"llmdoctor kfold: a replica failed: {exc}\nthe folds finished before it are kept; rerun to continue",
              file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, TrainingInterrupted):
        print("llmdoctor kfold: interrupted; rerun the same command to continue (finished folds are kept)",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0
