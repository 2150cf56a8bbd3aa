"""The doctors shipped with the embedded default (server/doctors/): what each folder holds, that
`llmdoctor serve` loads them (unless told not to), and that each moves its own score on held-out
prompts, served over HTTP with a fixed seed."""

from __future__ import annotations

import json
from statistics import mean

import pytest
from safetensors.torch import load_file

from llmdoctor.server.config import NamedPath, ServerSettings
from llmdoctor.server.shipped_doctors import SHIPPED_DIR, shipped_doctors, startup_doctors
from llmdoctor.training.scorers import get_scorer
from llmdoctor.training.synth import PROMPTS_FILE, load_prompts

SHIPPED = {entry.name: entry.path for entry in shipped_doctors()}
SERVED_FILES = {"adapter_config.json", "adapter_model.safetensors", "llmdoctor.json"}
MAX_BYTES = 5_000_000


def test_positivity_and_conciseness_ship():
    assert {"positivity", "conciseness"} <= set(SHIPPED), f"{SHIPPED_DIR} holds {sorted(SHIPPED)}"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_a_shipped_doctor_is_a_small_bfloat16_recipe_doctor_with_its_eval_row(name):
    folder = SHIPPED[name]
    assert {p.name for p in folder.iterdir()} == SERVED_FILES  # no value head, checkpoints or model card
    assert sum(p.stat().st_size for p in folder.iterdir()) < MAX_BYTES
    assert {t.dtype.__str__() for t in load_file(str(folder / "adapter_model.safetensors")).values()} == {
        "torch.bfloat16"}
    meta = json.loads((folder / "llmdoctor.json").read_text())
    assert (meta["kind"], meta["method"], meta["dimension"]) == ("doctor", "tfpo", name)
    assert meta["base_model"] == "SmolLM2-135M-Instruct"
    made = meta["recipe"]
    assert made["command"].startswith(f"llmdoctor recipe {name} ") and "--save-dtype bfloat16" in made["command"]
    assert isinstance(made["seed"], int) and len(made["data"]["sha256"]) == 64
    row = made["eval"]
    assert row["doctor"]["score"] > row["patient"]["score"], "the doctor moved its score in its own eval"


def test_startup_doctors_add_the_shipped_ones_on_the_embedded_default_only(tmp_path):
    mine = NamedPath(name="positivity", path=tmp_path)
    names = [(flag, e.name) for flag, e in startup_doctors(ServerSettings(doctor=[mine]))]
    assert names[0] == ("--doctor", "positivity")  # a --doctor of the same name replaces the shipped one
    assert sorted(n for f, n in names if f == "--default-doctors") == sorted(set(SHIPPED) - {"positivity"})
    assert startup_doctors(ServerSettings(default_doctors=False)) == []
    assert startup_doctors(ServerSettings(model=str(tmp_path))) == []  # another patient: not theirs
    assert startup_doctors(ServerSettings(doctor_base=str(tmp_path))) == []


# ---- served: each moves its own score --------------------------------------------------------------------

HELD_OUT = load_prompts(PROMPTS_FILE)[-6:]  # the recipes evaluate on the last shipped prompts, never trained on
SAMPLES = 3  # per prompt and setting, seeded


def _answers(openai_client, guidance, max_tokens):
    answers = []
    for i, prompt in enumerate(HELD_OUT):
        reply = openai_client.chat.completions.create(
            model="SmolLM2-135M-Instruct", messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=1.0, seed=100 + i, n=SAMPLES, extra_body={"guidance": guidance} if guidance else None)
        answers += [(prompt, c.message.content) for c in reply.choices]
    return answers


SCORES = {"positivity": ("sentiment", 48), "conciseness": ("length", 96)}  # the recipe's scorer and max_tokens


@pytest.mark.parametrize("name, scorer, max_tokens", [(n, *SCORES[n]) for n in sorted(SHIPPED)])
def test_each_shipped_doctor_moves_its_own_score_over_http(openai_client, name, scorer, max_tokens):
    """At the beta its eval row names, in ratio mode, served by the shared live server (which loaded the
    shipped doctors at start beside its test doctors)."""
    served = {m.id: m.model_extra for m in openai_client.models.list().data}
    assert served[name]["kind"] == "doctor" and served[name]["dimension"] == name
    beta = served[name]["eval"]["beta"]
    score = get_scorer(scorer)
    patient = mean(score(p, a) for p, a in _answers(openai_client, None, max_tokens))
    guided = mean(score(p, a) for p, a in _answers(
        openai_client, {"doctors": [{"name": name, "beta": beta, "mode": "ratio"}]}, max_tokens))
    assert guided > patient, (name, beta, guided, patient)
