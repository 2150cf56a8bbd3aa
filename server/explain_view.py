"""`llmdoctor explain`: a saved response of a request with `guidance.explain` as one self-contained HTML page,
each token coloured by how far the doctors moved it.

The shift of a token is rule_logprob - patient_logprob (nats): how much more (green) or less (red) likely the
guided rule made the token that was drawn than the patient alone would have. Everything in a response is
untrusted text: every value reaches the page through `html.escape`, and the page's Content-Security-Policy
allows no script and no network, so it is safe to open whatever the response holds. Stdlib only.
"""

from __future__ import annotations

import html
import json
import math
import re

SHIFT_CAP = 3.0  # nats: a shift this large or larger gets the full colour
MAX_ALPHA = 0.75  # the full colour's opacity, so text stays readable on it
PROMOTED_RGB = (22, 163, 74)  # green: the doctors made the token more likely
DEMOTED_RGB = (220, 38, 38)  # red: less likely
TOP = 5  # the most promoted / demoted tokens listed per choice
EXPLAIN_HINT = 'send the request with "guidance": {"doctors": [...], "explain": true}'
NUMBER_FIELDS = ("patient_logprob", "rule_logprob", "kl")
SPECIAL_TOKEN = re.compile(r"<\|[^<>|]*\|>|</?s>")  # <|im_end|>, <|endoftext|>, </s>


class ExplainViewError(ValueError):
    """A file that is not a saved explained response; the message says what was expected."""


# ------------------------------------------------------------------ loading


def load_response(text: str) -> dict:
    """A saved response, non-streamed (chat or completion JSON) or streamed (the SSE `data:` lines), as one
    response dict whose choices each hold their whole text and explanation. Raises ExplainViewError when the
    text is neither, or when no choice has an explanation; checks every entry's fields, so `render_html`
    can trust their types."""
    if text.lstrip().startswith("data:"):
        response = _merge_stream(text)
    else:
        try:
            response = json.loads(text)
        except ValueError:
            raise ExplainViewError("not a saved response: neither JSON nor an SSE stream of `data: {...}` lines") \
                from None
    _check_not_error(response)
    if not isinstance(response, dict) or not isinstance(response.get("choices"), list) or not response["choices"]:
        raise ExplainViewError("no `choices`: expected a /v1/chat/completions or /v1/completions response")
    for i, choice in enumerate(response["choices"]):
        _check_choice(choice, f"choices[{i}]")
    if not any(choice.get("explanation") for choice in response["choices"]):
        raise ExplainViewError(f"no choice has an `explanation`: {EXPLAIN_HINT}")
    return response


def _merge_stream(text: str) -> dict:
    """The chunks of an SSE stream merged per choice index; the last usage seen wins (it comes last)."""
    choices: dict[int, dict] = {}
    first, usage = None, None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.startswith("data:"):  # blank separators, `event:` and `:` comment lines
            continue
        payload = line.removeprefix("data:").strip()
        if payload == "[DONE]":
            continue
        try:
            chunk = json.loads(payload)
        except ValueError:
            raise ExplainViewError(f"line {number}: a `data:` line that is not JSON") from None
        _check_not_error(chunk)
        if not isinstance(chunk, dict) or not isinstance(chunk.get("choices", []), list):
            raise ExplainViewError(f"line {number}: not a completion chunk (expected an object with `choices`)")
        first = first or chunk
        usage = chunk.get("usage") or usage
        for part in chunk.get("choices", []):
            _check_choice(part, f"line {number}: choice")
            merged = choices.setdefault(part.get("index", 0), {"index": part.get("index", 0), "text": [],
                                                                "explanation": [], "finish_reason": None})
            merged["text"].append(_choice_text(part))
            merged["explanation"].extend(part.get("explanation") or [])
            merged["finish_reason"] = part.get("finish_reason") or merged["finish_reason"]
    if first is None:
        raise ExplainViewError("an SSE stream without a single `data: {...}` chunk")
    chat = first.get("object") == "chat.completion.chunk"
    merged_choices = [_as_choice(choices[i], chat) for i in sorted(choices)]
    return {"id": first.get("id"), "object": "chat.completion" if chat else "text_completion",
            "model": first.get("model"), "choices": merged_choices, "usage": usage}


def _as_choice(merged: dict, chat: bool) -> dict:
    text = "".join(merged.pop("text"))
    return {**merged, "message": {"role": "assistant", "content": text}} if chat else {**merged, "text": text}


def _check_not_error(payload: object) -> None:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        message = payload["error"].get("message")
        raise ExplainViewError(f"the saved response is an error, not a completion: {message}")


def _check_choice(choice: object, where: str) -> None:
    if not isinstance(choice, dict):
        raise ExplainViewError(f"{where}: expected an object")
    if not isinstance(choice.get("index", 0), int):
        raise ExplainViewError(f"{where}.index: expected an integer")
    explanation = choice.get("explanation")
    if explanation is None:
        return
    if not isinstance(explanation, list):
        raise ExplainViewError(f"{where}.explanation: expected a list of per-token entries")
    for j, entry in enumerate(explanation):
        _check_entry(entry, f"{where}.explanation[{j}]")


def _check_entry(entry: object, where: str) -> None:
    def number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
        raise ExplainViewError(f"{where}: expected an object with a string `token`")
    for field in NUMBER_FIELDS:
        if not number(entry.get(field)):
            raise ExplainViewError(f"{where}.{field}: expected a finite number")
    if not number(entry.get("beta_scale", 1.0)):
        raise ExplainViewError(f"{where}.beta_scale: expected a finite number")
    doctors = entry.get("doctor_logprobs")
    if not isinstance(doctors, dict) or not all(number(v) for v in doctors.values()):
        raise ExplainViewError(f"{where}.doctor_logprobs: expected an object of doctor name -> finite number")


def _choice_text(choice: dict) -> str:
    """A choice's text: `text` (completions) or `message.content` / `delta.content` (chat)."""
    if "text" in choice:
        return choice["text"] or ""
    message = choice.get("message") or choice.get("delta") or {}
    return (message.get("content") or "") if isinstance(message, dict) else ""


# ------------------------------------------------------------------ rendering


def shift_of(entry: dict) -> float:
    """How far the doctors moved the drawn token, in nats: > 0 they made it more likely."""
    return entry["rule_logprob"] - entry["patient_logprob"]


def shift_colour(shift: float) -> str:
    """The background of a token: green for a promoted token, red for a demoted one, opacity proportional to
    |shift| up to SHIFT_CAP."""
    red, green, blue = PROMOTED_RGB if shift >= 0 else DEMOTED_RGB
    alpha = MAX_ALPHA * min(abs(shift), SHIFT_CAP) / SHIFT_CAP
    return f"rgba({red}, {green}, {blue}, {alpha:.3f})"


def render_html(response: dict, title: str | None = None) -> str:
    """One self-contained page (inline CSS, no script, no external resource) for a dict from `load_response`."""
    model = str(response.get("model") or "?")
    title = title or f"llmdoctor explain: {model}"
    mean_kl = (response.get("usage") or {}).get("mean_kl_per_token")
    usage = f" · usage.mean_kl_per_token {mean_kl:.4f} nats" if isinstance(mean_kl, int | float) else ""
    sections = "".join(_choice_section(choice, i) for i, choice in enumerate(response["choices"]))
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        # no script, no network: even a response crafted to break out of the escaping could do nothing
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n"
        f"<title>{_escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{_escape(title)}</h1>\n<p class=\"meta\">model <code>{_escape(model)}</code>{_escape(usage)}</p>\n"
        f"{_legend()}\n{sections}</body>\n</html>\n"
    )


def _escape(value: object) -> str:
    return html.escape(str(value), quote=True)


def _legend() -> str:
    steps = [-SHIFT_CAP, -SHIFT_CAP / 2, 0.0, SHIFT_CAP / 2, SHIFT_CAP]
    swatches = "".join(f'<span class="swatch" style="background:{shift_colour(s)}">{s:+.1f}</span>' for s in steps)
    return (
        '<div class="legend">shift = rule log-prob − patient log-prob of each drawn token (nats): '
        f"{swatches} <span class=\"note\">red: the doctors made it less likely, green: more likely; full colour "
        f"at ±{SHIFT_CAP:g} or beyond. Hover a token for its log-probs, KL and beta scale.</span></div>"
    )


def _choice_section(choice: dict, position: int) -> str:
    index, entries = choice.get("index", position), choice.get("explanation") or []
    finish = f" · finish_reason {_escape(choice['finish_reason'])}" if choice.get("finish_reason") else ""
    head = f"<section class=\"choice\">\n<h2>choice {_escape(index)}<small>{finish}</small></h2>\n"
    if not entries:
        return head + f"<p class=\"note\">no explanation for this choice ({_escape(EXPLAIN_HINT)})</p>\n</section>\n"
    spans = "".join(_token_span(entry, n) for n, entry in enumerate(entries))
    return head + f"{_summary(entries)}\n<div class=\"tokens\">{spans}</div>\n{_extremes(entries)}\n</section>\n"


def _token_span(entry: dict, position: int) -> str:
    token, shift = entry["token"], shift_of(entry)
    kind = "tok special" if SPECIAL_TOKEN.fullmatch(token) else "tok"
    lines = [f"#{position} {json.dumps(token, ensure_ascii=False)}", f"patient  {entry['patient_logprob']:.3f}"]
    lines += [f"{name}  {value:.3f}" for name, value in entry["doctor_logprobs"].items()]
    lines += [f"rule  {entry['rule_logprob']:.3f}", f"shift  {shift:+.3f}", f"kl  {entry['kl']:.4f}",
              f"beta_scale  {entry.get('beta_scale', 1.0):.3f}"]
    # a newline is invisible inside its span: a CSS-drawn marker shows it (not copied with the text)
    text = _escape(token).replace("\n", '<span class="nl"></span>\n')
    return (f'<span class="{kind}" style="background:{shift_colour(shift)}" '
            f'title="{_escape(chr(10).join(lines))}">{text}</span>')


def _summary(entries: list[dict]) -> str:
    shifts = [shift_of(e) for e in entries]
    kl = sum(e["kl"] for e in entries) / len(entries)
    scaled = sum(1 for e in entries if e.get("beta_scale", 1.0) < 1.0)
    doctors = sorted({name for e in entries for name in e["doctor_logprobs"]})
    names = ", ".join(f"<code>{_escape(d)}</code>" for d in doctors) or "none"
    return (f'<p class="summary">{len(entries)} tokens · mean KL {kl:.4f} nats/token · mean shift '
            f"{sum(shifts) / len(shifts):+.3f} nats · steps scaled by max_kl: {scaled} · doctors: {names}</p>")


def _extremes(entries: list[dict]) -> str:
    ranked = sorted(range(len(entries)), key=lambda n: shift_of(entries[n]))
    promoted = [n for n in reversed(ranked) if shift_of(entries[n]) > 0][:TOP]
    demoted = [n for n in ranked if shift_of(entries[n]) < 0][:TOP]
    return (f'<div class="extremes">{_ranked_list("most promoted", promoted, entries)}'
            f"{_ranked_list('most demoted', demoted, entries)}</div>")


def _ranked_list(label: str, positions: list[int], entries: list[dict]) -> str:
    items = "".join(f"<li><code>{_escape(json.dumps(entries[n]['token'], ensure_ascii=False))}</code> "
                    f"{shift_of(entries[n]):+.3f} <span class=\"note\">#{n}</span></li>" for n in positions)
    items = items or '<li class="note">none</li>'
    return f"<div><h3>{label}</h3><ol>{items}</ol></div>"


CSS = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #1a1a1a; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 2em; } h3 { font-size: 0.95em; margin: 0.5em 0; }
h2 small { font-weight: normal; color: #666; }
.meta, .note { color: #666; } .summary { margin: 0.3em 0; }
.legend { margin: 1em 0; } .swatch { display: inline-block; padding: 0 0.5em; margin-right: 2px;
  border: 1px solid #ddd; font: 12px monospace; }
.tokens { white-space: pre-wrap; font: 14px/1.8 ui-monospace, monospace; border: 1px solid #ddd;
  padding: 0.8em; border-radius: 4px; overflow-wrap: anywhere; }
.tok { border-radius: 2px; } .tok:hover { outline: 1px solid #333; }
.special { color: #888; font-size: 0.85em; font-style: italic; }
.nl::before { content: "\\21B5"; color: #aaa; }
.extremes { display: flex; gap: 3em; } .extremes ol { margin: 0; padding-left: 1.5em; }
code { white-space: pre; }
"""
