"""A causal LM plus any number of hot-loaded LoRA adapters, usable per row in one forward.

peft's mixed-adapter batches (`adapter_names=[...]`, one name per row, "__base__" for none) let
the bare model, patient adapters and doctors share a single pass over the base weights. The model
is wrapped in a PeftModel only while an adapter is loaded: the first load wraps it, unloading the
last one unwraps it, so a server without adapters runs the plain transformers model.

Adapters are built from checked bytes (adapter_folders.read_adapter), never from the disk, and
each load is all-or-nothing: a load that fails leaves the model exactly as it was. Public names are
the API's; peft sees slot names chosen here ("slot1", ...): a public name may hold '.', or be
"default" or "__base__", none of which peft can take as an adapter name.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import warnings

import torch

from llmdoctor.server.errors import AdapterError, ConflictError

logger = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class LoraHost:
    """Owns a model; `forward` runs rows with per-row adapters. Not thread-safe: one caller thread."""

    def __init__(self, model: torch.nn.Module):
        self.base = model.eval()
        self.peft = None  # PeftModel while an adapter is loaded
        self._slots: dict[str, str] = {}  # public name -> peft adapter name
        self._slot_ids = itertools.count(1)

    @property
    def config(self):
        return self.base.config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def names(self) -> list[str]:
        return list(self._slots)

    def load(self, name: str, config: dict, weights: bytes) -> None:
        """Add adapter `name` from a checked adapter_config dict and safetensors bytes.
        All or nothing: on any failure the model is left as it was, and AdapterError is raised."""
        from safetensors.torch import load as load_safetensors

        if name == BASE:  # rows use it to say "no adapter"
            raise AdapterError(f"the adapter name {BASE!r} is reserved", "name")
        if name in self._slots:
            raise ConflictError(f"adapter '{name}' is already loaded here", "name")
        slot = f"slot{next(self._slot_ids)}"
        try:
            lora_config = _lora_config(config)
            state = load_safetensors(weights)
            self._inject(slot, lora_config)
            self._fill(slot, state)
        except Exception as exc:
            self._drop(slot)
            if isinstance(exc, AdapterError):
                raise
            raise AdapterError(f"adapter '{name}' does not fit the model: {exc}", "path") from exc
        self._slots[name] = slot
        self.peft.eval()

    def unload(self, name: str) -> None:
        self._drop(self._slots.pop(name))

    def _inject(self, slot: str, lora_config) -> None:
        from peft import PeftModel

        if self.peft is None:
            self.peft = PeftModel(self.base, lora_config, adapter_name=slot)
        else:
            self.peft.add_adapter(slot, lora_config)

    def _fill(self, slot: str, state: dict[str, torch.Tensor]) -> None:
        """Copy the adapter's tensors into its injected layers; every key must land, every layer be filled."""
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(self.peft, state, adapter_name=slot)
        unfilled = [k for k in result.missing_keys if f".{slot}." in k]
        if result.unexpected_keys or unfilled:
            raise AdapterError(f"the adapter's tensors do not match its layers: unexpected "
                               f"{result.unexpected_keys[:3]}, missing {unfilled[:3]}", "path")

    def _drop(self, slot: str) -> None:
        """Remove `slot` from peft; unwrap the model entirely when no other adapter is left."""
        if self.peft is None:  # the first load failed while peft was wrapping the model
            _strip_lora_layers(self.base)
            return
        others = [s for s in self.peft.peft_config if s != slot]
        if others:
            if slot in self.peft.peft_config:
                with warnings.catch_warnings():  # "adapter was active": rows name theirs, none is active
                    warnings.simplefilter("ignore", UserWarning)
                    self.peft.delete_adapter(slot)
            return
        # peft.unload() puts the original linear layers back (nothing merged): the bare model again
        self.base = self.peft.unload().eval()
        self.peft = None

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, 1, T, K) additive
        position_ids: torch.Tensor,  # (B, T)
        cache,
        adapters: list[str],  # one public name per row; BASE for none
    ) -> torch.Tensor:
        """Logits of the last position of every row, (B, V)."""
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        if self.peft is not None:
            # Always name adapters per row: without adapter_names peft would apply its *active* one to all rows.
            slots = [BASE if a == BASE else self._slots[a] for a in adapters]
            out = self.peft(**kwargs, adapter_names=slots)
        else:
            assert all(a == BASE for a in adapters), f"rows name adapters that are not loaded: {set(adapters)}"
            out = self.base(**kwargs)
        return out.logits[:, -1, :]


def _lora_config(config: dict):
    """peft's LoraConfig from a checked adapter_config dict (options peft does not know are dropped:
    adapter_contents.check_options allowed them only unset)."""
    from peft import LoraConfig

    known = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    kwargs = {k: v for k, v in config.items() if k in known and k not in ("peft_type", "peft_version")}
    kwargs["inference_mode"] = True
    return LoraConfig(**kwargs)


def _strip_lora_layers(model: torch.nn.Module) -> None:
    """Put back the original layer wherever peft injected a LoRA layer (in place)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    injected = [(name, m) for name, m in model.named_modules() if isinstance(m, BaseTunerLayer)]
    for name, layer in injected:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
