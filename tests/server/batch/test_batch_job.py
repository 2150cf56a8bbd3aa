"""`llmdoctor batch` end to end: a local Ray, 2 engine replicas of the embedded model, a real doctor."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from llmdoctor.server.cli import main


TOPICS = ["rain", "cats", "music", "bread", "rivers", "stars", "chess", "tea", "snow", "trains"]


def _requests(n: int) -> list[dict]:
    """n greedy rows: chat and completion, some guided by the cheerful doctor, two bad ones."""
    rows = []
    for i in range(n):
        topic = TOPICS[(i // 4) % len(TOPICS)]  # a group of 4 rows asks about one topic
        if i % 4 == 3:
            rows.append({"id": f"r{i}", "prompt": f"A short note about {topic}:", "max_tokens": 6, "temperature": 0})
        else:
            row = {"id": f"r{i}", "messages": [{"role": "user", "content": f"Tell me about {topic}."}],
                   "max_tokens": 6, "temperature": 0}
            if i % 4 == 1:
                row["guidance"] = {"doctors": {"cheerful": 2.0}}
            rows.append(row)
    rows[5] = {"id": "r5", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 0}
    rows[9] = {"id": "r9", "messages": [{"role": "user", "content": "Hi"}], "guidance": {"doctors": {"nobody": 1}}}
    return rows


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _results(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _command(inp, out, doctor_dir, *extra) -> list[str]:
    return [sys.executable, "-m", "llmdoctor.server.cli", "batch", "--input", str(inp), "--output", str(out),
            "--replicas", "2", "--doctor", f"cheerful={doctor_dir}", "--batch-size", "8", *extra]


@pytest.mark.slow
def test_a_killed_job_rerun_gives_every_id_exactly_once(tmp_path, doctor_adapter_dir):
    rows = _requests(240)
    inp, out = _write(tmp_path / "requests.jsonl", rows), tmp_path / "results.jsonl"
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}

    # 1) start, and kill the whole job (driver, local Ray, replicas) once some results are written
    first = subprocess.Popen(_command(inp, out, doctor_adapter_dir), env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 40:
            break
        time.sleep(0.2)
    assert first.poll() is None, f"the job ended before it was killed:\n{first.stderr.read().decode()[-3000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    written_before = len(_results(out))
    assert 40 <= written_before < len(rows)

    # 2) the same command again finishes the rest
    second = subprocess.run(_command(inp, out, doctor_adapter_dir), env=env, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"{written_before} of {len(rows)} ids already in" in second.stderr
    results = _results(out)
    assert Counter(r["id"] for r in results) == Counter(r["id"] for r in rows)  # each id exactly once

    by_id = {r["id"]: r for r in results}
    assert by_id["r5"]["error"]["param"] == "max_tokens" and by_id["r5"]["error"]["code"] == 400
    assert by_id["r9"]["error"]["code"] == 404 and "nobody" in by_id["r9"]["error"]["message"]
    errors = [r for r in results if "error" in r]
    assert len(errors) == 2, errors[:3]

    # greedy: the same request gives the same answer whichever replica, and whichever run, served it
    answers: dict[str, set[str]] = {}
    for row in rows:
        if row["id"] in ("r5", "r9"):
            continue
        response = by_id[row["id"]]["response"]
        choice = response["choices"][0]
        text = choice["message"]["content"] if "messages" in row else choice["text"]
        key = json.dumps({k: v for k, v in row.items() if k != "id"}, sort_keys=True)
        answers.setdefault(key, set()).add(text)
        assert response["usage"]["completion_tokens"] <= 6
    assert all(len(texts) == 1 for texts in answers.values()), answers
    # the doctor was applied: a guided chat answer differs from the unguided one for the same question
    plain = {json.loads(k)["messages"][0]["content"]: next(iter(v)) for k, v in answers.items()
             if "messages" in json.loads(k) and "guidance" not in json.loads(k)}
    guided = {json.loads(k)["messages"][0]["content"]: next(iter(v)) for k, v in answers.items()
              if "guidance" in json.loads(k)}
    assert sum(plain[q] != guided[q] for q in guided) >= len(guided) // 2, (plain, guided)

    # 3) a third run has nothing to do
    third = subprocess.run(_command(inp, out, doctor_adapter_dir), env=env, capture_output=True, text=True,
                           timeout=120)
    assert third.returncode == 0 and "nothing to do" in third.stderr


@pytest.mark.slow
def test_parquet_in_and_out_with_default_guidance_and_retry_errors(tmp_path, doctor_adapter_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    inp, out = tmp_path / "requests.parquet", tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"id": f"q{i}", "prompt": f"Number {i} is", "max_tokens": 4, "temperature": 0.0} for i in range(6)]), inp)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(_command(inp, out, doctor_adapter_dir, "--replicas", "1", "--guidance",
                                   '{"doctors": {"cheerful": 1.0}}'), env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(out).to_pylist()
    assert sorted(r["id"] for r in table) == [f"q{i}" for i in range(6)] and not any(r["error"] for r in table)

    # an error row (made by hand: a job's errors are usually timeouts) runs again under --retry-errors
    from llmdoctor.server.batch.batch_files import ResultFile, result_row

    results = ResultFile(out)
    kept = [r for r in results.rows() if r["id"] != "q0"]
    for part in out.iterdir():
        part.unlink()
    results.append(kept + [result_row("q0", error={"message": "timed out", "code": 504})])
    again = subprocess.run(_command(inp, out, doctor_adapter_dir, "--replicas", "1", "--retry-errors"), env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "1 error rows removed" in again.stderr and "5 of 6 ids already in" in again.stderr
    rows = ResultFile(out).rows()
    assert sorted(r["id"] for r in rows) == [f"q{i}" for i in range(6)] and all("response" in r for r in rows)


@pytest.mark.parametrize(("args", "message"), [
    (["--replicas", "0"], "--replicas must be at least 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--guidance", "{nope"], "--guidance: Invalid JSON"),
    (["--guidance", '{"doctors": {"cheerful": "lots"}}'], "--guidance: doctors.0.beta"),
    (["--guidance", '{"doctors": {"cheerful": 1}}'], "--guidance names doctor 'cheerful', which neither --doctor"),
    (["--max-batch", "0"], "--max-batch (env LLMDOCTOR_MAX_BATCH): Input should be greater than or equal to 1"),
])
def test_bad_flags_exit_2_before_anything_starts(tmp_path, capsys, args, message):
    inp = _write(tmp_path / "in.jsonl", _requests(12))
    code = main(["batch", "--input", str(inp), "--output", str(tmp_path / "out.jsonl"), *args])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out.jsonl").exists()


def test_a_bad_input_file_exits_2_naming_the_line(tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    assert main(["batch", "--input", str(inp), "--output", str(tmp_path / "out.jsonl")]) == 2
    assert "line 2 repeats id 'a'" in capsys.readouterr().err


def test_an_output_from_another_job_is_refused(tmp_path, capsys):
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x"}])
    out = _write(tmp_path / "out.jsonl", [{"id": "zzz", "response": {}}])
    assert main(["batch", "--input", str(inp), "--output", str(out)]) == 2
    assert "holds ids the input does not have (e.g. 'zzz')" in capsys.readouterr().err


@pytest.mark.slow
def test_a_replica_that_cannot_start_fails_the_job_with_its_own_message(tmp_path):
    inp = _write(tmp_path / "in.jsonl", [{"id": "a", "prompt": "x", "max_tokens": 2}])
    done = subprocess.run([sys.executable, "-m", "llmdoctor.server.cli", "batch", "--input", str(inp), "--output",
                           str(tmp_path / "out.jsonl"), "--model", str(tmp_path / "no-such-model")],
                          env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1
    failure = next(line for line in done.stderr.splitlines() if "the job failed" in line)
    assert "no-such-model" in failure and "Error" in failure, done.stderr[-2000:]
