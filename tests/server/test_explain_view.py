"""`llmdoctor explain`: a saved explained response (JSON or SSE) as one HTML page; the loader, the page, the CLI."""

import json
import subprocess
import sys

import pytest

from llmdoctor.server.cli import main
from llmdoctor.server.explain_view import (
    DEMOTED_RGB,
    PROMOTED_RGB,
    ExplainViewError,
    load_response,
    render_html,
    shift_colour,
)

TOKEN_SPAN = '<span class="tok'


def entry(token, patient=-1.0, rule=-1.0, doctors=None, kl=0.1, beta_scale=1.0):
    return {"token": token, "patient_logprob": patient, "doctor_logprobs": doctors or {"cheerful": rule},
            "rule_logprob": rule, "kl": kl, "beta_scale": beta_scale}


def chat(*explanations, model="SmolLM2-135M-Instruct"):
    choices = [{"index": i, "message": {"role": "assistant", "content": "".join(e.get("token", "") for e in ex)},
                "finish_reason": "stop", "explanation": ex} for i, ex in enumerate(explanations)]
    return {"id": "c1", "object": "chat.completion", "model": model, "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "mean_kl_per_token": 0.1}}


def completion(explanation):
    return {"id": "t1", "object": "text_completion", "model": "m",
            "choices": [{"index": 0, "text": "Hi", "finish_reason": "length", "explanation": explanation}]}


def sse(*payloads):
    return "".join(f"data: {json.dumps(p)}\n\n" for p in payloads) + "data: [DONE]\n\n"


def chat_chunk(index, content=None, explanation=None, finish_reason=None, role=None):
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    choice = {"index": index, "delta": delta, "finish_reason": finish_reason, "explanation": explanation}
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [choice]}


HELLO = [entry("Hello", -2.0, -0.5), entry("!", -0.5, -1.5), entry("<|im_end|>", -0.1, -0.1)]


# ------------------------------------------------------------------ load_response


def test_load_response_of_chat_json_keeps_its_choices():
    response = load_response(json.dumps(chat(HELLO)))
    assert response["choices"][0]["explanation"] == HELLO


def test_load_response_merges_an_sse_chat_stream_per_choice():
    text = sse(chat_chunk(0, role="assistant", content=""), chat_chunk(1, role="assistant", content=""),
               chat_chunk(0, "Hel", [entry("Hel")]), chat_chunk(1, "Bye", [entry("Bye")]),
               chat_chunk(0, "lo", [entry("lo"), entry("<|im_end|>")], "stop"),
               chat_chunk(1, None, [entry("<|im_end|>")], "stop"),
               {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6, "mean_kl_per_token": 0.2}})
    response = load_response(text)
    first, second = response["choices"]
    assert response["object"] == "chat.completion" and response["usage"]["mean_kl_per_token"] == 0.2
    assert (first["message"]["content"], [e["token"] for e in first["explanation"]]) == \
        ("Hello", ["Hel", "lo", "<|im_end|>"])
    assert (second["index"], second["message"]["content"], second["finish_reason"]) == (1, "Bye", "stop")


def test_load_response_merges_an_sse_completion_stream():
    chunk = completion([entry("Hi")])
    response = load_response(sse(chunk, {**chunk, "choices": [{"index": 0, "text": " there",
                                                                 "explanation": [entry(" there")]}]}))
    assert response["choices"][0]["text"] == "Hi there" and len(response["choices"][0]["explanation"]) == 2


@pytest.mark.parametrize(("text", "message"), [
    ("hello", "neither JSON nor an SSE stream"),
    ("[1, 2]", "no `choices`"),
    ('{"id": "x"}', "no `choices`"),
    ('{"error": {"message": "doctor nope not found"}}', "is an error, not a completion: doctor nope not found"),
    (json.dumps({**chat(HELLO), "choices": [{"index": 0, "message": {"content": "x"}}]}),
     'no choice has an `explanation`: send the request with "guidance": {"doctors": [...], "explain": true}'),
    (json.dumps(chat([{**HELLO[0], "kl": "big"}])), "choices[0].explanation[0].kl: expected a finite number"),
    (json.dumps(chat([{"patient_logprob": 0}])), "choices[0].explanation[0]: expected an object with a string"),
    (json.dumps(chat([{**HELLO[0], "doctor_logprobs": []}])), "doctor_logprobs: expected an object"),
    ("data: {not json\n\n", "line 1: a `data:` line that is not JSON"),
    ('data: {"error": {"message": "boom"}}\n\n', "is an error, not a completion: boom"),
    ("data: [DONE]\n\n", "without a single `data: {...}` chunk"),
])
def test_load_response_refuses_what_is_not_an_explained_response(text, message):
    with pytest.raises(ExplainViewError) as info:
        load_response(text)
    assert message in str(info.value)


# ------------------------------------------------------------------ render_html


def test_render_html_has_one_span_per_token_in_order():
    page = render_html(load_response(json.dumps(chat(HELLO))))
    assert page.count(TOKEN_SPAN) == 3
    assert page.index(">Hello</span>") < page.index(">!</span>") < page.index(">&lt;|im_end|&gt;</span>")


def test_render_html_of_a_completion_response():
    page = render_html(load_response(json.dumps(completion([entry("Hi"), entry(" there")]))))
    assert page.count(TOKEN_SPAN) == 2 and "finish_reason length" in page


def test_render_html_gives_each_of_two_choices_a_section():
    page = render_html(load_response(json.dumps(chat(HELLO, [entry("Bye")]))))
    assert page.count('<section class="choice">') == 2 and "choice 1" in page and page.count(TOKEN_SPAN) == 4


def test_render_html_escapes_tokens_doctor_names_and_model():
    hostile = entry("<script>alert(1)</script>", doctors={'say "hi" <b>': -1.0})
    page = render_html(load_response(json.dumps(chat([hostile], model='"><img src=x onerror=alert(1)>'))),
                       title="<i>t</i>")
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'say "hi"' not in page and "say &quot;hi&quot; &lt;b&gt;" in page
    assert "<img" not in page and "<i>t</i>" not in page


def test_render_html_colours_a_promoted_token_with_the_positive_hue_and_a_demoted_one_with_the_negative():
    page = render_html(load_response(json.dumps(chat([entry("up", -3.0, -1.0), entry("down", -1.0, -3.0)]))))
    up = page[page.index(TOKEN_SPAN):page.index(">up</span>")]
    down = page[page.index(">up</span>"):page.index(">down</span>")]
    assert "rgba({}, {}, {}".format(*PROMOTED_RGB) in up and "rgba({}, {}, {}".format(*DEMOTED_RGB) in down


def test_shift_colour_grows_with_the_shift_and_saturates_at_the_cap():
    assert shift_colour(0.5) != shift_colour(1.0) and shift_colour(3.0) == shift_colour(30.0)
    assert shift_colour(-3.0) == shift_colour(-30.0) != shift_colour(3.0)


def test_render_html_tooltip_shows_every_log_prob_the_shift_kl_and_beta_scale():
    page = render_html(load_response(json.dumps(chat([entry("Hi", -2.0, -0.5, {"cheerful": -0.25}, 0.3, 0.5)]))))
    for line in ("patient  -2.000", "cheerful  -0.250", "rule  -0.500", "shift  +1.500", "kl  0.3000",
                 "beta_scale  0.500"):
        assert line in page


def test_render_html_shows_newlines_and_mutes_special_tokens():
    page = render_html(load_response(json.dumps(chat([entry("a\nb"), entry("<|im_end|>")]))))
    assert "white-space: pre-wrap" in page and '<span class="nl"></span>\n' in page
    assert '<span class="tok special"' in page


def test_render_html_summary_lists_the_five_most_promoted_and_demoted_tokens():
    tokens = [entry(f"p{i}", -8.0, -8.0 + i) for i in range(1, 8)] + [entry("d", -1.0, -2.0)]
    page = render_html(load_response(json.dumps(chat(tokens))))
    promoted = page[page.index("most promoted"):page.index("most demoted")]
    assert [f"p{i}" in promoted for i in range(1, 8)] == [False, False, True, True, True, True, True]
    assert "&quot;d&quot;" in page[page.index("most demoted"):] and "8 tokens" in page


def test_render_html_is_self_contained():
    page = render_html(load_response(json.dumps(chat(HELLO))))
    assert "<style>" in page and "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page and "src=" not in page


# ------------------------------------------------------------------ the CLI


def test_cli_explain_writes_the_page_beside_the_response(tmp_path, capsys):
    saved = tmp_path / "response.json"
    saved.write_text(json.dumps(chat(HELLO)))
    assert main(["explain", str(saved)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "response.html")
    assert (tmp_path / "response.html").read_text().count(TOKEN_SPAN) == 3


def test_cli_explain_output_flag_and_a_saved_stream(tmp_path, capsys):
    saved = tmp_path / "stream.txt"
    saved.write_text(sse(chat_chunk(0, "Hi", [entry("Hi")], "stop")))
    assert main(["explain", str(saved), "-o", str(tmp_path / "view.html")]) == 0
    assert (tmp_path / "view.html").read_text().count(TOKEN_SPAN) == 1


def test_cli_explain_from_stdin_writes_the_page_to_stdout():
    done = subprocess.run([sys.executable, "-m", "llmdoctor.server.cli", "explain", "-"],
                          input=json.dumps(chat(HELLO)), capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("<!DOCTYPE html>") and done.stdout.count(TOKEN_SPAN) == 3


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("folder", "is a folder"),
    (b"\xff\xfe\x00", "not UTF-8 text"),
    ("{oops", "neither JSON nor an SSE stream"),
    (json.dumps({**chat(HELLO), "choices": [{"index": 0, "text": "x"}]}), '"explain": true'),
])
def test_cli_explain_bad_response_exits_2_with_one_line(tmp_path, capsys, content, message):
    saved = tmp_path / "response.json"
    if content == "folder":
        saved.mkdir()
    elif isinstance(content, bytes):
        saved.write_bytes(content)
    elif content is not None:
        saved.write_text(content)
    assert main(["explain", str(saved)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"llmdoctor explain: {saved}: ") and message in err and err.count("\n") == 1


def test_cli_explain_unwritable_output_exits_2(tmp_path, capsys):
    saved = tmp_path / "response.json"
    saved.write_text(json.dumps(chat(HELLO)))
    assert main(["explain", str(saved), "-o", str(tmp_path / "missing" / "view.html")]) == 2
    assert "cannot write" in capsys.readouterr().err


def test_cli_explain_never_overwrites_the_response(tmp_path, capsys):
    saved = tmp_path / "response.html"
    saved.write_text(json.dumps(chat(HELLO)))
    assert main(["explain", str(saved)]) == 2
    assert "would overwrite RESPONSE" in capsys.readouterr().err and saved.read_text() == json.dumps(chat(HELLO))


def test_cli_explain_error_in_a_real_process_has_no_traceback():
    done = subprocess.run([sys.executable, "-m", "llmdoctor.server.cli", "explain", "-"], input="not json",
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "llmdoctor explain: stdin: not a saved response: neither JSON nor an SSE stream " \
                                  "of `data: {...}` lines"


def test_cli_explain_on_a_live_explained_chat_response(live_server, tmp_path):
    request = {"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8, "temperature": 0,
               "guidance": {"doctors": [{"name": "cheerful", "beta": 2.0}], "explain": True}}
    with live_server.client() as http:
        response = http.post("/v1/chat/completions", json=request)
    assert response.status_code == 200, response.text
    saved = tmp_path / "response.json"
    saved.write_text(response.text)
    done = subprocess.run([sys.executable, "-m", "llmdoctor.server.cli", "explain", str(saved)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    explanation = response.json()["choices"][0]["explanation"]
    assert (tmp_path / "response.html").read_text().count(TOKEN_SPAN) == len(explanation) > 0
