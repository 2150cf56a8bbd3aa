import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from llmdoctor.server.cli import main
from llmdoctor.training.synth import (
    EXIT_USAGE,
    PROMPTS_FILE,
    SynthOptions,
    done_prompts,
    load_prompts,
    make_row,
    rank,
    response_seed,
    run,
    sentence_cut,
    with_sentence_cuts,
)

PROMPTS = ["Describe your ideal weekend.", "What do you think about rainy days?", "Give advice to a new cook."]


def _write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def one_thread():
    """2 cores: a test that runs the model keeps to one thread so parallel torch jobs do not collapse."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- real runs on the embedded model


def test_synth_ranked_run_writes_one_row_per_prompt_with_a_preference(tmp_path, one_thread):
    prompts, out, err = _write_prompts(tmp_path / "p.jsonl", PROMPTS), tmp_path / "out.jsonl", io.StringIO()
    options = SynthOptions(prompts, out, scorer="sentiment", k=2, format="ranked", max_tokens=8, progress_every=1)
    assert run(options, err) == 0
    rows = _rows(out)
    assert 1 <= len(rows) <= 3 and len({r["prompt"] for r in rows}) == len(rows)
    for row in rows:
        assert row["prompt"] in PROMPTS and len(row["responses"]) == 2
        assert row["scores"][0] > row["scores"][1]  # best first
        assert row["meta"]["scorer"] == "sentiment" and row["meta"]["scores"] == row["scores"]
        assert row["meta"]["truncated"] == [True, True]  # 8 tokens: every answer was cut, none ended
    assert "3/3 prompts" in err.getvalue() and "prompts/s" in err.getvalue()
    assert f"wrote {len(rows)} rows" in err.getvalue() and f"{3 - len(rows)} prompts skipped" in err.getvalue()


def test_synth_resume_skips_prompts_already_in_the_output(tmp_path, one_thread):
    prompts, out, err = _write_prompts(tmp_path / "p.jsonl", PROMPTS), tmp_path / "out.jsonl", io.StringIO()
    done = {"prompt": PROMPTS[0], "chosen": "Yes.", "rejected": "No, sadly.", "meta": {"scorer": "length"}}
    out.write_text(json.dumps(done) + "\n" + '{"prompt": "torn by a ki')  # a kill mid-write left half a row
    assert main(["data", "synth", "--prompts", str(prompts), "--output", str(out), "--scorer", "length",
                 "--k", "2", "--max-tokens", "8"]) == 0
    rows = _rows(out)  # every line parses: the torn row was cut off
    assert rows[0] == done and [r["prompt"] for r in rows].count(PROMPTS[0]) == 1
    assert all(set(r) == {"prompt", "chosen", "rejected", "meta"} for r in rows)
    assert run(SynthOptions(prompts, out, scorer="length", k=2, max_tokens=8), err) == 0  # rerun: nothing to add
    assert _rows(out) == rows


def test_synth_ctrl_c_leaves_a_valid_file_and_says_how_to_resume(tmp_path):
    out = tmp_path / "out.jsonl"
    command = [sys.executable, "-m", "llmdoctor.server.cli", "data", "synth", "--output", str(out), "--limit", "40",
               "--k", "2", "--max-tokens", "16", "--scorer", "length_long", "--progress-every", "100",
               "--max-batch", "2"]  # small batches: rows land one by one, not all at the end
    # SIGINT default in the child: a suite started in the background (`cmd &`) passes SIGINT on as ignored
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out.is_file() and out.stat().st_size) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=60)
    assert job.returncode == 130, err
    assert "Run the same command again to continue" in err
    rows = _rows(out)  # every line parses
    assert 1 <= len(rows) < 40 and done_prompts(out) == {r["prompt"] for r in rows}


# ---------------------------------------------------------------- bad input: one line, exit 2


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"prompts": "missing.jsonl"}, "no such file"),
        ({"scorer": "toxicity"}, "known: sentiment, length, length_long"),
        ({"k": 1}, "--k must be at least 2"),
        ({"format": "triples"}, "known: pairwise, ranked"),
        ({"temperature": 0.0}, "--temperature must be > 0"),
    ],
)
def test_synth_bad_option_is_one_line_exit_2(tmp_path, change, message):
    prompts = _write_prompts(tmp_path / "p.jsonl", PROMPTS)
    fields = {"prompts": prompts, "output": tmp_path / "out.jsonl", **change}
    if isinstance(fields["prompts"], str):
        fields["prompts"] = tmp_path / fields["prompts"]
    err = io.StringIO()
    assert run(SynthOptions(**fields), err) == EXIT_USAGE
    assert message in err.getvalue() and err.getvalue().count("\n") == 1
    assert not (tmp_path / "out.jsonl").exists()


def test_synth_empty_prompts_file_is_refused(tmp_path):
    err = io.StringIO()
    (tmp_path / "p.jsonl").write_text("\n\n")
    assert run(SynthOptions(tmp_path / "p.jsonl", tmp_path / "o.jsonl"), err) == EXIT_USAGE
    assert "the file has no prompts" in err.getvalue()


def test_synth_cli_unknown_scorer_exits_2(tmp_path, capsys):
    assert main(["data", "synth", "--output", str(tmp_path / "o.jsonl"), "--scorer", "nope"]) == EXIT_USAGE
    assert "known: sentiment" in capsys.readouterr().err


def test_load_prompts_names_the_bad_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "Hi"}\n{"text": "Hello"}\n')
    with pytest.raises(ValueError, match='line 2 needs a non-empty "prompt"'):
        load_prompts(path)


def test_done_prompts_refuses_a_file_that_is_not_synth_output(tmp_path):
    path = tmp_path / "o.jsonl"
    path.write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 is not a synth row"):
        done_prompts(path)


# ---------------------------------------------------------------- pure parts


def test_shipped_prompt_file_has_a_few_hundred_unique_prompts():
    prompts = load_prompts(PROMPTS_FILE)
    assert len(prompts) >= 300
    assert len(PROMPTS_FILE.read_text().splitlines()) == len(prompts)  # no duplicates in the file


def test_rank_sorts_best_first_and_keeps_ties_in_order():
    assert rank(["a", "b", "c", "d"], [0.1, 0.5, 0.1, -1.0]) == (["b", "a", "c", "d"], [0.5, 0.1, 0.1, -1.0])


def test_make_row_pairwise_takes_best_and_worst():
    row = make_row("p", ["ok", "great", "bad"], [0.0, 0.9, -0.5], "pairwise", "sentiment", "m")
    assert row == {"prompt": "p", "chosen": "great", "rejected": "bad",
                   "meta": {"scorer": "sentiment", "scores": [0.9, 0.0, -0.5], "model": "m",
                            "truncated": [False, False]}}


def test_make_row_marks_the_responses_cut_at_max_tokens_best_first():
    cut = frozenset({"bad", "ok"})
    pairwise = make_row("p", ["ok", "great", "bad"], [0.0, 0.9, -0.5], "pairwise", "length", "m", cut)
    assert pairwise["meta"]["truncated"] == [False, True]  # chosen "great" ended, rejected "bad" was cut
    ranked = make_row("p", ["ok", "great", "bad"], [0.0, 0.9, -0.5], "ranked", "length", "m", cut)
    assert ranked["meta"]["truncated"] == [False, True, True]


def test_synth_length_rows_need_a_response_that_ended(tmp_path, one_thread):
    prompts, out, err = _write_prompts(tmp_path / "p.jsonl", PROMPTS), tmp_path / "out.jsonl", io.StringIO()
    assert run(SynthOptions(prompts, out, scorer="length", k=2, max_tokens=8), err) == 0
    assert _rows(out) == [] and "3 prompts skipped" in err.getvalue()


def test_make_row_length_has_no_preference_when_even_the_shortest_response_was_cut():
    everything_cut = frozenset({"a b", "a b c"})
    assert make_row("p", ["a b", "a b c"], [-2.0, -3.0], "pairwise", "length", "m", everything_cut) is None
    # sentiment of a cut response still means something: the row stays
    assert make_row("p", ["a b", "a b c"], [0.5, -0.5], "pairwise", "sentiment", "m", everything_cut) is not None


def test_synth_sentence_cuts_give_length_rows_that_share_a_prefix_and_differ_in_stopping(tmp_path, one_thread):
    # 24 tokens cut every response at --max-tokens, so without cuts nothing is written (test above)
    prompts, out, err = _write_prompts(tmp_path / "p.jsonl", PROMPTS), tmp_path / "out.jsonl", io.StringIO()
    assert run(SynthOptions(prompts, out, scorer="length", k=2, max_tokens=24, sentence_cuts=True), err) == 0
    rows = _rows(out)
    assert rows, err.getvalue()
    for row in rows:
        assert row["meta"]["sentence_cut"] is True and row["meta"]["truncated"][0] is False
        assert row["rejected"].startswith(row["chosen"]) and len(row["rejected"]) > len(row["chosen"])


@pytest.mark.parametrize(("text", "cut"), [
    ("Hello there. This is a long answer with many words indeed. And more text follows.",
     "Hello there. This is a long answer with many words indeed."),  # the first sentence of 6+ words
    ('He said "that is a fine idea for us all." Then he left the room.', 'He said "that is a fine idea for us all."'),
    ("One two three four five six seven.", None),  # nothing after the sentence: no shorter answer
    ("No sentence end in this text at all, only words", None),
    ("Version 2.5 of the tool is out now! Get it today from the site.", "Version 2.5 of the tool is out now!"),
])
def test_sentence_cut_ends_after_the_first_full_sentence(text, cut):
    assert sentence_cut(text) == cut


def test_make_row_pairs_a_winning_sentence_cut_with_its_own_source():
    long_a = "A short first sentence is here now. Then it goes on and on and on."
    long_b = "Another answer that is much longer than the others here. It keeps going for a long while more."
    sources = with_sentence_cuts([long_a, long_b])
    responses = [long_a, long_b, *sources]
    scores = [-float(len(r.split())) for r in responses]
    row = make_row("p", responses, scores, "pairwise", "length", "m", frozenset({long_a}), sources)
    assert row["chosen"] == "A short first sentence is here now." and row["rejected"] == long_a  # not long_b
    assert row["meta"]["sentence_cut"] is True and row["meta"]["truncated"] == [False, True]
    ranked = make_row("p", responses, scores, "ranked", "length", "m", frozenset(), sources)
    assert len(ranked["responses"]) == 4 and ranked["responses"][-1] == long_b


def test_make_row_ranked_keeps_all_responses():
    row = make_row("p", ["ok", "great", "bad"], [0.0, 0.9, -0.5], "ranked", "sentiment", "m")
    assert row["responses"] == ["great", "ok", "bad"] and row["scores"] == [0.9, 0.0, -0.5]


def test_make_row_all_tied_is_none():
    assert make_row("p", ["a", "b"], [0.0, 0.0], "pairwise", "sentiment", "m") is None


def test_make_row_drops_empty_and_repeated_responses():
    row = make_row("p", ["good", "", "good", "bad"], [0.5, 0.9, 0.5, -0.5], "ranked", "sentiment", "m")
    assert row["responses"] == ["good", "bad"] and row["scores"] == [0.5, -0.5]
    assert make_row("p", ["same", "same", " "], [0.1, 0.1, 0.9], "ranked", "sentiment", "m") is None


def test_response_seed_depends_on_prompt_and_index_only():
    assert response_seed(0, "p", 1) == response_seed(0, "p", 1)
    assert len({response_seed(0, "p", 0), response_seed(0, "p", 1), response_seed(0, "q", 0),
                response_seed(1, "p", 0)}) == 4
