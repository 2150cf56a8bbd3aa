"""`llmdoctor train rewards --config rewards.yaml`: token-level rewards for every preference pair.

    result = compute_rewards(load_rewards_config("rewards.yaml"))   # -> RewardsResult

For each row (prompt, chosen, rejected) the patient runs, batched and without gradients, over both
responses under the positive and the negative face (the face is the system turn of the chat; a
system turn already in the prompt follows it). The response tokens are those of the plain
conversation, the one the doctor will see when serving, so stage 2 trains on exactly these ids.
Formulas: token_rewards.py.

Output rows (JSONL or Parquet), one per preference pair:
    {"key", "prompt", "chosen", "rejected",
     "prompt_ids", "chosen_ids", "rejected_ids", "chosen_rewards", "rejected_rewards",
     "dimension", "model", "tokenizer"}
`tokenizer` fingerprints the vocabulary so stage 2 can refuse a doctor base that tokenizes
differently. Resumable: finished batches are appended to `<output>.partial.jsonl`; a rerun skips
the rows already there (by `key`, a hash of the row's text), and the final file is written once
every row is done. A rerun after that reports the file and recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmdoctor.server.jsonl_journal import whole_lines
from llmdoctor.training.doctor_config import RewardsConfig

PARTIAL_SUFFIX = ".partial.jsonl"


@dataclass
class RewardsResult:
    output: Path
    rows: int  # rows in the output file
    computed: int  # rows computed by this run (0 when the file was already complete)
    summary: dict[str, float]


# ---- tokens ----------------------------------------------------------------------------------------


def with_face(prompt: str | list[dict[str, str]], face: str) -> list[dict[str, str]]:
    """The conversation with `face` as its first system turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    return [{"role": "system", "content": face}, *messages]


def prompt_ids(tokenizer, prompt: str | list[dict[str, str]]) -> list[int]:
    """The prompt as the chat template renders it with a generation prompt (what the server sends)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the vocabulary (token -> id): equal fingerprints tokenize alike."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def row_key(record: dict[str, Any]) -> str:
    text = json.dumps([record["prompt"], record["chosen"], record["rejected"]], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def right_padded(sequences: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (N, L)."""
    width = max(map(len, sequences))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    return ids, mask


# ---- one batch -------------------------------------------------------------------------------------


def batch_rewards(model, tokenizer, records: list[dict[str, Any]], config: RewardsConfig) -> list[dict[str, Any]]:
    """Output rows for `records` (each with prompt, chosen, rejected), in order."""
    from llmdoctor.training.gdpo_training import tokenize_group
    from llmdoctor.training.token_rewards import directional_rewards, response_logprobs, token_importance, token_signs

    r = config.rewards
    faces = r.faces()
    # 1) plain prompt ids and response ids (the doctor's view), then the faced prompts
    plain = [tokenize_group({"prompt": x["prompt"], "responses": [x["chosen"], x["rejected"]],
                             "truncated": _ends(x.get("truncated"))}, tokenizer, True)
             for x in records]
    sequences, starts, responses = [], [], []
    for face in (faces.positive, faces.negative):
        for record, tokens in zip(records, plain, strict=True):
            faced = prompt_ids(tokenizer, with_face(record["prompt"], face))
            for response in tokens["response_ids"]:  # chosen, rejected
                sequences.append(faced + response)
                starts.append(len(faced))
                responses.append(response)
    # 2) one forward of the patient over all 4 x B sequences
    device = next(model.parameters()).device
    ids, mask = right_padded(sequences, tokenizer.pad_token_id)
    length = max(map(len, responses))
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    logps = response_logprobs(logits, ids.to(device), torch.tensor(starts, device=device), length).cpu()  # (4B, T)
    response_mask = torch.tensor([[1] * len(x) + [0] * (length - len(x)) for x in responses])
    # 3) importance and directional rewards; rows are [pos: (c, r) x B, neg: (c, r) x B]
    half = len(sequences) // 2
    importance = token_importance(logps[:half], logps[half:], response_mask[:half], r.tau, r.epsilon)
    signs = token_signs(r.direction, torch.tensor([1.0, -1.0]).repeat(len(records)), logps[:half], logps[half:])
    rewards = directional_rewards(importance, signs, r.theta)
    return [
        _output_row(record, tokens, rewards[2 * i], rewards[2 * i + 1])
        for i, (record, tokens) in enumerate(zip(records, plain, strict=True))
    ]


def _ends(truncated: list[bool] | None) -> list[bool]:
    """The chosen and rejected (first and last) of a row's truncated flags."""
    return [truncated[0], truncated[-1]] if truncated else [False, False]


def _output_row(record: dict, tokens: dict, chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, Any]:
    chosen_ids, rejected_ids = tokens["response_ids"]
    return {
        "key": row_key(record),
        "prompt": record["prompt"],
        "chosen": record["chosen"],
        "rejected": record["rejected"],
        "prompt_ids": tokens["prompt_ids"],
        "chosen_ids": chosen_ids,
        "rejected_ids": rejected_ids,
        "chosen_rewards": [round(v, 5) for v in chosen[: len(chosen_ids)].tolist()],
        "rejected_rewards": [round(v, 5) for v in rejected[: len(rejected_ids)].tolist()],
    }


# ---- the job ---------------------------------------------------------------------------------------


def compute_rewards(config: RewardsConfig, stream=None) -> RewardsResult:
    """Compute (or finish) the token-rewards file of `config`. Raises ConfigError / DataError."""
    from llmdoctor.training.data import load_preferences
    from llmdoctor.training.trainer_runs import load_policy, load_tokenizer, resolve_patient

    stream = stream or sys.stderr
    output = Path(config.rewards.output)
    if output.is_file():
        rows = read_reward_rows(output)
        print(f"rewards: {output} is complete ({len(rows)} rows); nothing to do", file=stream)
        return RewardsResult(output, len(rows), 0, summarize(rows))
    # 1) rows (checked like training data: pairs, or ranked groups cut to best vs worst)
    patient = resolve_patient(config)
    tokenizer = load_tokenizer(config, patient)
    _require_chat_template(tokenizer)
    data = load_preferences(config.dataset, "gdpo", tokenizer, group_size=2, seed=0)
    records = [{**row.to_record()} for row in data.rows]
    partial = output.with_name(output.name + PARTIAL_SUFFIX)
    whole_lines(partial)  # a row torn by a kill is cut off; it is redone
    done = {row["key"] for row in _read_jsonl(partial)} if partial.is_file() else set()
    todo = [record for record in records if row_key(record) not in done]
    print(f"rewards: {len(records)} pairs ({len(done)} already done), dimension {config.rewards.dimension}, "
          f"patient {patient.name}", file=stream)
    # 2) the patient, then batches appended to the partial file as they finish
    model = load_policy(patient, config.device).eval()
    meta = {"dimension": config.rewards.dimension, "model": patient.name, "tokenizer": tokenizer_fingerprint(tokenizer)}
    output.parent.mkdir(parents=True, exist_ok=True)
    started, size = time.monotonic(), config.rewards.batch_size
    with partial.open("a", encoding="utf-8") as out:
        for start in range(0, len(todo), size):
            for row in batch_rewards(model, tokenizer, todo[start : start + size], config):
                out.write(json.dumps({**row, **meta}) + "\n")
            out.flush()
            _progress(min(start + size, len(todo)), len(todo), started, stream)
    # 3) the final file, in the rows' file order
    by_key = {row["key"]: row for row in _read_jsonl(partial)}
    rows = [by_key[row_key(record)] for record in records]
    write_reward_rows(output, rows)
    partial.unlink()
    summary = summarize(rows)
    print(f"rewards: wrote {len(rows)} rows to {output} ({format_summary(summary)})", file=stream)
    return RewardsResult(output, len(rows), len(todo), summary)


def _require_chat_template(tokenizer) -> None:
    from llmdoctor.training.config import ConfigError

    if tokenizer.chat_template is None:
        raise ConfigError(
            "model.base_model: the faces are system turns of a chat, but the tokenizer has no chat template; "
            "set model.base_model to a tokenizer that has one",
            field="model.base_model",
        )


def _progress(done: int, total: int, started: float, stream) -> None:
    rate = done / max(time.monotonic() - started, 1e-9)
    eta = (total - done) / rate if rate > 0 else 0.0
    print(f"rewards: {done}/{total} pairs, {rate:.2f} pairs/s, ETA {eta:.0f}s", file=stream, flush=True)


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Share of tokens with a non-zero reward, and mean reward per token of chosen / rejected."""
    chosen = [v for row in rows for v in row["chosen_rewards"]]
    rejected = [v for row in rows for v in row["rejected_rewards"]]
    every = chosen + rejected
    return {
        "tokens": len(every),
        "nonzero_share": round(sum(v != 0 for v in every) / max(len(every), 1), 4),
        "chosen_mean_reward": round(sum(chosen) / max(len(chosen), 1), 4),
        "rejected_mean_reward": round(sum(rejected) / max(len(rejected), 1), 4),
    }


def format_summary(summary: dict[str, float]) -> str:
    return (f"{summary['tokens']} tokens, {summary['nonzero_share']:.0%} rewarded, mean reward "
            f"chosen {summary['chosen_mean_reward']:+.3f} / rejected {summary['rejected_mean_reward']:+.3f}")


# ---- files -----------------------------------------------------------------------------------------


def write_reward_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSONL or Parquet by suffix; written to a temporary name, then renamed (never half a file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    os.replace(tmp, path)


def read_reward_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a token-rewards file (JSONL or Parquet)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill (see whole_lines)
    return rows
