"""`llmdoctor kfold` (training/kfold.py): folds, scoring, config errors, and a real k = 3 run on the embedded
model with the shipped topic rows, killed mid-way and resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmdoctor.server.cli import main
from llmdoctor.training import kfold
from llmdoctor.training.kfold import split_folds
from llmdoctor.training.kfold_config import load_kfold_config
from llmdoctor.training.kfold_scoring import PredictionScorer, is_correct, normalise
from llmdoctor.training.sft_data import SftRow
from tests.adapters import one_torch_thread

TOPICS = Path(kfold.__file__).parent / "data" / "topics.jsonl"


def _rows(labels: list[str]) -> list[SftRow]:
    return [SftRow(i, f"q{i}", label, label) for i, label in enumerate(labels)]


def test_stratified_folds_cover_every_row_once_with_each_labels_share():
    rows = _rows(["a"] * 30 + ["b"] * 15 + ["c"] * 6)
    folds = split_folds(rows, 3, seed=0, stratify=True)
    assert sorted(i for f in folds for i in f) == list(range(51))
    for fold in folds:
        labels = [rows[i].label for i in fold]
        assert (labels.count("a"), labels.count("b"), labels.count("c")) == (10, 5, 2)
    assert split_folds(rows, 3, seed=0, stratify=True) == folds  # seeded
    assert split_folds(rows, 3, seed=1, stratify=True) != folds
    assert sorted(map(len, split_folds(rows, 4, seed=0, stratify=False))) == [12, 13, 13, 13]


def test_more_folds_than_rows_is_refused_naming_the_field():
    with pytest.raises(Exception) as caught:
        split_folds(_rows(["a", "b"]), 3, seed=0, stratify=False)
    assert caught.value.field == "folds.k"


@pytest.mark.parametrize("metric, prediction, reference, correct", [
    ("exact_match", " Sports. ", "sports", True),
    ("exact_match", "sports, obviously", "sports", False),
    ("first_token", "Sports, obviously", "sports", True),
    ("first_token", "Obviously sports", "sports", False),
    ("first_token", "", "sports", False),
])
def test_scoring(metric, prediction, reference, correct):
    assert is_correct(metric, prediction, reference) is correct
    assert normalise('  "Hello   World!" ') == "hello world"
    row = SftRow(0, "q", reference, "label")
    assert PredictionScorer(metric)(row, prediction) == (correct, float(correct))


def test_a_data_synth_scorer_scores_without_a_reference():
    row = SftRow(0, "Tell me about rain.", "Rain is wet.", None)
    assert PredictionScorer("length")(row, "one two three") == (None, -3.0)
    correct, happy = PredictionScorer("sentiment")(row, "What a wonderful, lovely day!")
    assert correct is None and happy > 0.5 > PredictionScorer("sentiment")(row, "An awful, horrible day.")[1]


def _config(folder: Path, **changes) -> Path:
    rows = [json.loads(line) for line in TOPICS.read_text().splitlines()][:36]
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "dataset": {"path": "rows.jsonl", "label_field": "label", "max_length": 256},
        "folds": {"k": 3, "seed": 0},
        "sft": {"lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, "learning_rate": 1e-3, "batch_size": 8,
                "max_steps": 3, "save_steps": 100, "seed": 0, "target_modules": ["q_proj", "v_proj"]},
        "predict": {"max_tokens": 3, "concurrency": 16},
        "score": "first_token",
        "compare": {"patient": True, "guided": {"terse": {"doctors": [{"name": "conciseness", "beta": 0.5,
                                                                         "mode": "ratio"}]}}},
        "output_dir": str(folder / "out"),
    }
    for section, value in changes.items():
        config[section] = {**config[section], **value} if isinstance(value, dict) else value
    path = folder / "kfold.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("changes, field", [
    ({"folds": {"k": 1}}, "folds.k"),
    ({"folds": {"k": 37}}, "folds.k"),
    ({"dataset": {"label_field": "topic"}}, "dataset.label_field"),
    ({"score": "bleu"}, "score"),
    ({"predict": {"replicas": 0}}, "predict.replicas"),
    ({"sft": {"lora_r": 0}}, "sft.lora_r"),
    ({"compare": {"guided": {"sft": {"doctors": [{"name": "x", "beta": 1}]}}}}, "compare"),
    ({"predict": {"temprature": 0}}, "predict.temprature"),
    ({"compare": {"guided": {"g": {"doctors": [{"name": "x", "beta": 1, "mode": "sharpen"}]}}}},
     "compare.guided.g.doctors.0.mode"),
])
def test_bad_configs_exit_2_naming_the_field(tmp_path, capsys, changes, field):
    assert main(["kfold", "--config", str(_config(tmp_path, **changes))]) == 2
    assert field in capsys.readouterr().err
    assert not (tmp_path / "out" / "fold-0").exists()


def test_a_guided_doctor_that_is_not_loaded_exits_2_before_training(tmp_path, embedded_model, capsys):
    changes = {"compare": {"guided": {"terse": {"doctors": [{"name": "nobody", "beta": 0.5}]}}}}
    assert main(["kfold", "--config", str(_config(tmp_path, **changes))]) == 2
    err = capsys.readouterr().err
    assert "compare.guided.terse.doctors.0.name: no doctor 'nobody' is loaded; loaded: conciseness" in err
    assert not (tmp_path / "out" / "fold-0").exists()


def test_the_shipped_kfold_config_validates():
    config = load_kfold_config(Path(kfold.__file__).parent / "configs" / "kfold.yaml")
    assert config.dataset.path.resolve() == TOPICS.resolve() and config.folds.k == 5 and config.compare.patient


def test_kfold_end_to_end_killed_in_fold_1_then_resumed(tmp_path, embedded_model, monkeypatch, capsys):
    config = _config(tmp_path)
    run_fold = kfold._run_fold

    def killed_in_fold_1(config, number, *args, **kwargs):
        if number == 1:
            raise KeyboardInterrupt
        return run_fold(config, number, *args, **kwargs)

    monkeypatch.setattr(kfold, "_run_fold", killed_in_fold_1)
    with one_torch_thread():
        assert main(["kfold", "--config", str(config)]) == 130
    out = tmp_path / "out"
    assert (out / "fold-0" / "result.json").is_file() and not (out / "fold-1" / "result.json").exists()
    fold_0 = (out / "fold-0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns

    monkeypatch.setattr(kfold, "_run_fold", run_fold)
    with one_torch_thread():
        assert main(["kfold", "--config", str(config)]) == 0
    log = capsys.readouterr().out
    assert "fold 0: done before, skipped" in log and "peak RSS" in log
    assert (out / "fold-0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns == fold_0  # not redone
    report = json.loads((out / "report.json").read_text())
    assert [f["fold"] for f in report["folds"]] == [0, 1, 2] and report["k"] == 3 and report["rows"] == 36
    assert {s["setting"] for s in report["settings"]} == {"sft", "patient", "terse"}
    assert 0 <= report["mean_accuracy"] <= 1 and all(f["peak_rss_mb"] > 0 for f in report["folds"])
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 36 * 3  # every row once per setting, none twice after the resume
    assert {(p["setting"], p["index"]) for p in predictions} == {(s, i) for s in ("sft", "patient", "terse")
                                                                 for i in range(36)}
    csv = (out / "report.csv").read_text().splitlines()
    assert csv[0] == "fold,setting,rows,accuracy" and len(csv) == 1 + 3 * 3 + 3
    # the folds' adapters are patient adapters the server loads
    meta = json.loads((out / "fold-2" / "adapter" / "llmdoctor.json").read_text())
    assert (meta["kind"], meta["method"]) == ("patient", "sft")


@pytest.mark.slow
def test_kfold_predicts_on_ray_replicas_with_the_answers_of_one_process(tmp_path, embedded_model):
    """--replicas 2: a local Ray, two engine replicas; every fold's adapter reaches both, the rows are shared
    out, and each prediction is the one the in-process predictor gives with that fold's adapter. Scored by a
    `data synth` scorer (length): mean scores, no accuracy."""
    import os
    import subprocess
    import sys

    from llmdoctor.training.kfold_predict import LocalFoldPredictor

    config = _config(tmp_path, folds={"k": 2}, sft={"max_steps": 2}, compare={"guided": {}}, score="length")
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()][:24]
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = subprocess.run([sys.executable, "-m", "llmdoctor.server.cli", "kfold", "--config", str(config),
                           "--replicas", "2"], env={**os.environ, "RAY_AUTH_MODE": "disabled"},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replicas' peak RSS" in done.stdout
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert all(len(f["replica_peak_rss_mb"]) == 2 for f in report["folds"])
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted((p["setting"], p["index"]) for p in predictions) == sorted(
        (s, i) for s in ("sft", "patient") for i in range(24))
    assert all(p["correct"] is None and p["score"] == -len(p["prediction"].split()) for p in predictions)
    assert report["mean_accuracy"] is None and report["mean_score"] <= 0 and report["score"] == "length"
    assert (out / "report.csv").read_text().startswith("fold,setting,rows,mean_score\n")

    loaded = load_kfold_config(config)
    folds = json.loads((out / "folds.json").read_text())
    data = {row.index: row for row in kfold.load_sft(loaded.dataset, seed=0).rows}
    local = LocalFoldPredictor(loaded)
    try:
        with one_torch_thread():
            again = local.predict(0, [data[i] for i in folds[0]], out / "fold-0" / "adapter")
    finally:
        local.close()
    on_ray = [(p["setting"], p["index"], p["prediction"]) for p in predictions if p["fold"] == 0]
    assert [(a.setting, a.index, a.text) for a in again] == on_ray
