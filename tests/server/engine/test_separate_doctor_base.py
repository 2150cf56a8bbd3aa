"""Doctors on a base model of their own: the doctor runner's separate batched pass."""

import json
import os

import pytest

from llmdoctor.server.engine.protocol import DoctorWeight, GenerateRequest, Guidance, SamplingParams
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.errors import InvalidRequestError
from llmdoctor.server.model_store import ResolvedModel


def _linked_copy(src, dst, edit_tokenizer=None):
    """The model folder again under another path (files linked, tokenizer.json optionally edited)."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name == "tokenizer.json" and edit_tokenizer:
            data = json.loads(f.read_text())
            edit_tokenizer(data)
            (dst / f.name).write_text(json.dumps(data))
        else:
            os.symlink(f, dst / f.name)
    return ResolvedModel(name="doctor-base", folder=dst)


async def _greedy(engine, ids, guidance):
    request = GenerateRequest(f"sep-{id(guidance)}-{len(ids)}", ids, SamplingParams(max_tokens=12, temperature=0.0),
                              guidance)
    return [t async for e in engine.generate(request) for t in e.token_ids]


async def test_separate_doctor_base_gives_the_shared_base_tokens(engine, embedded_model, doctor_adapter_dir,
                                                                 tokenizer, tmp_path):
    ids = tuple(tokenizer("Tell me about your weekend.")["input_ids"])
    guidance = Guidance(doctors=(DoctorWeight("cheerful", 1.5),))
    shared = await _greedy(engine, ids, guidance)
    separate = TorchEngine(embedded_model, max_batch=4, doctor_base=_linked_copy(embedded_model.folder, tmp_path / "b"))
    await separate.start()
    try:
        assert not separate.doctors.shared and separate.doctor_base_name == "doctor-base"
        await separate.load_adapter("cheerful", str(doctor_adapter_dir), "doctor")
        assert await _greedy(separate, ids, guidance) == shared
        # ratio mode needs the doctor's base log-probs, which only a shared base gives for free: refused
        with pytest.raises(InvalidRequestError) as refused:
            await _greedy(separate, ids, Guidance(doctors=(DoctorWeight("cheerful", 1.5, "ratio"),)))
        assert refused.value.param == "guidance.doctors[0].mode" and "--doctor-base" in refused.value.message
        again = Guidance(doctors=(DoctorWeight("cheerful", 1.5),))  # another object: another request id
        assert await _greedy(separate, ids, again) == shared  # and the engine serves on
    finally:
        await separate.shutdown(0)


async def test_doctor_base_with_another_tokenizer_is_refused(embedded_model, tmp_path):
    def rename_a_token(data):
        vocab = data["model"]["vocab"]
        token = next(iter(vocab))
        vocab["llmdoctor-renamed"] = vocab.pop(token)

    other = _linked_copy(embedded_model.folder, tmp_path / "other", rename_a_token)
    engine = TorchEngine(embedded_model, doctor_base=other)
    with pytest.raises(InvalidRequestError, match="different tokenizer") as err:
        await engine.start()
    assert err.value.param == "doctor_base"
