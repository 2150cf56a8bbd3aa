"""Memory across k-fold folds: each fold's peak resident memory (train + predict) from a real `llmdoctor kfold`
run on the shipped topic rows, and fold k's peak against fold 1's (issue 20's bar: fold 5 within 10 %).

    .venv/bin/python benchmarks/bench_kfold_memory.py [--k 5] [--max-steps N] [--output runs/bench-kfold]

The run is the shipped training/configs/kfold.yaml (one epoch a fold) with a fresh output folder. Per fold it
prints the peak of training and of prediction, and the resident memory once the fold is released: a leak shows
as growth there. A training peak follows the longest padded batch the fold trains on, so runs cut short with
--max-steps see different batches per fold and their peaks differ by the data, not by bloat. On a GPU machine
it also prints the CUDA peak per fold.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--max-steps", type=int, help="steps per fold (default: the config's, one epoch)")
    parser.add_argument("--output", type=Path, default=Path("runs/bench-kfold"))
    args = parser.parse_args()
    from llmdoctor.training.kfold import run_kfold
    from llmdoctor.training.kfold_config import load_kfold_config

    config = load_kfold_config(ROOT / "training" / "configs" / "kfold.yaml")
    config.folds.k = args.k
    if args.max_steps:
        config.sft.max_steps = args.max_steps
    config.output_dir = args.output
    shutil.rmtree(args.output, ignore_errors=True)
    report = run_kfold(config)
    first = report.folds[0]
    print(f"\n{'fold':>4} {'peak RSS MB':>12} {'vs fold 1':>10} {'train peak':>11} {'predict peak':>13} "
          f"{'after MB':>9} {'vs fold 1':>10} {'peak CUDA MB':>13}")
    for fold in report.folds:
        cuda = f"{fold.peak_cuda_mb:>13.0f}" if fold.peak_cuda_mb is not None else f"{'-':>13}"
        print(f"{fold.fold + 1:>4} {fold.peak_rss_mb:>12.0f} {fold.peak_rss_mb / first.peak_rss_mb:>9.3f}x "
              f"{fold.train_peak_rss_mb:>11.0f} {fold.predict_peak_rss_mb:>13.0f} {fold.rss_after_mb:>9.0f} "
              f"{fold.rss_after_mb / first.rss_after_mb:>9.3f}x {cuda}")
    last = report.folds[-1].peak_rss_mb / first.peak_rss_mb
    print(f"fold {args.k} peak / fold 1 peak: {last:.3f}x (bar <= 1.10: {'met' if last <= 1.10 else 'NOT met'}); "
          f"resident after fold {args.k} / after fold 1: {report.folds[-1].rss_after_mb / first.rss_after_mb:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
