"""What a request's sampling parameters do to a step's scores before the draw, in both engines.

The order (README "Sampling"), the one vLLM's sampler uses:

  1. the rule (the patient's own distribution for an unguided request)
  2. min_tokens (EOS and stop_token_ids impossible until that many tokens) and logit_bias (added,
     clamped to [-100, 100] as vLLM does)
  3. penalties, by vLLM's formulas: repetition (a token seen in the prompt or the output has its
     score divided by the penalty when positive, multiplied when not), then frequency (minus
     penalty x its count in the output) and presence (minus penalty once it is in the output)
  4. temperature, min_p (tokens below min_p x the top token's probability dropped), top-k, top-p

The scores are the rule's log-probs for a guided request. For an unguided one they are the patient's
logits, as in vLLM: the repetition penalty is not shift-invariant, so it must see the same numbers
vLLM's does for an unguided request to sample alike in both engines.

Each function works on a whole step's rows at once and leaves rows without the parameter untouched.
"""

from __future__ import annotations

from collections.abc import Sequence as Seq

import torch

from llmdoctor.server.engine.protocol import MAX_BIAS, SamplingParams


def needs_adjusting(p: SamplingParams, generated: int) -> bool:
    """Whether step 2 or 3 changes this row's scores at this step."""
    return bool(p.logit_bias) or generated < p.min_tokens or has_penalties(p)


def has_penalties(p: SamplingParams) -> bool:
    return p.repetition_penalty != 1.0 or p.frequency_penalty != 0.0 or p.presence_penalty != 0.0


def mask_and_bias(scores: torch.Tensor, rows: Seq[int], params: Seq[SamplingParams], generated: Seq[int],
                  stop_ids: Seq[Seq[int]]) -> None:
    """Step 2 in place on scores[rows]: min_tokens' mask, then logit_bias (one scatter each for the batch)."""
    masked_rows, masked_ids, biased_rows, biased_ids, biases = [], [], [], [], []
    for row, p, n, stops in zip(rows, params, generated, stop_ids):
        if n < p.min_tokens:
            masked_rows += [row] * len(stops)
            masked_ids += list(stops)
        for token, bias in p.logit_bias:
            biased_rows.append(row)
            biased_ids.append(token)
            biases.append(max(-MAX_BIAS, min(MAX_BIAS, bias)))
    device = scores.device
    if masked_rows:
        scores[torch.tensor(masked_rows, device=device), torch.tensor(masked_ids, device=device)] = float("-inf")
    if biased_rows:
        index = (torch.tensor(biased_rows, device=device), torch.tensor(biased_ids, device=device))
        scores.index_put_(index, torch.tensor(biases, dtype=scores.dtype, device=device), accumulate=True)


def apply_penalties(scores: torch.Tensor, rows: Seq[int], params: Seq[SamplingParams], prompts: Seq[Seq[int]],
                    outputs: Seq[Seq[int]]) -> None:
    """Step 3 in place on scores[rows], vLLM's formulas (vllm/model_executor/layers/utils.py apply_penalties)."""
    if not rows:
        return
    device, vocab = scores.device, scores.shape[-1]
    index = torch.tensor(list(rows), device=device)
    sub = scores.index_select(0, index).float()
    output_counts = _bin_counts(outputs, vocab, device)
    seen = (_bin_counts(prompts, vocab, device) > 0) | (output_counts > 0)
    repetition = torch.tensor([p.repetition_penalty for p in params], device=device).unsqueeze(-1)
    factor = torch.where(seen, repetition, 1.0)
    sub = torch.where(sub > 0, sub / factor, sub * factor)
    frequency = torch.tensor([p.frequency_penalty for p in params], device=device).unsqueeze(-1)
    presence = torch.tensor([p.presence_penalty for p in params], device=device).unsqueeze(-1)
    sub -= frequency * output_counts + presence * (output_counts > 0)
    scores.index_copy_(0, index, sub.to(scores.dtype))


def _bin_counts(token_lists: Seq[Seq[int]], vocab: int, device) -> torch.Tensor:
    """(R, vocab) float32 counts of each token id in each row's list."""
    counts = torch.zeros(len(token_lists), vocab + 1, device=device)  # column `vocab`: the padding
    longest = max((len(t) for t in token_lists), default=0)
    if longest:
        padded = torch.full((len(token_lists), longest), vocab, dtype=torch.long)
        for i, tokens in enumerate(token_lists):
            padded[i, :len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
        padded = padded.to(device)
        counts.scatter_add_(1, padded, torch.ones(padded.shape, device=device))
    return counts[:, :vocab]


def adjust_scores(scores: torch.Tensor, params: Seq[SamplingParams], prompts: Seq[Seq[int]],
                  outputs: Seq[Seq[int]], stop_ids: Seq[Seq[int]]) -> list[int]:
    """Steps 2 and 3 in place on a step's (R, V) scores; returns the rows it changed (their scores are no
    longer normalised: the caller takes their log_softmax)."""
    rows = [i for i, (p, out) in enumerate(zip(params, outputs)) if needs_adjusting(p, len(out))]
    if not rows:
        return []
    mask_and_bias(scores, rows, [params[i] for i in rows], [len(outputs[i]) for i in rows],
                  [stop_ids[i] for i in rows])
    penalised = [i for i in rows if has_penalties(params[i])]
    apply_penalties(scores, penalised, [params[i] for i in penalised], [prompts[i] for i in penalised],
                    [outputs[i] for i in penalised])
    return rows


def min_p_filter(logits: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Tokens whose probability is below min_p x the top token's, -inf (after temperature, as vLLM); min_p 0 = off."""
    probs = torch.softmax(logits, dim=-1)
    threshold = probs.amax(dim=-1, keepdim=True) * min_p.unsqueeze(-1)
    return logits.masked_fill(probs < threshold, float("-inf"))
