"""A causal LM plus any number of hot-loaded LoRA adapters, usable per row in one forward.

peft's mixed-adapter batches (`adapter_names=[...]`, one name per row, "__base__" for none) let
the bare model, patient adapters and doctors share a single pass over the base weights. The model
is wrapped in a PeftModel only when the first adapter arrives, so a server without adapters runs
the plain transformers model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from llmdoctor.server.errors import AdapterError

logger = logging.getLogger(__name__)

BASE = "__base__"  # peft's name for "no adapter" in a mixed batch


class LoraHost:
    """Owns a model; `forward` runs rows with per-row adapters. Not thread-safe: one caller thread."""

    def __init__(self, model: torch.nn.Module):
        self.base = model.eval()
        self.peft = None  # PeftModel once an adapter is loaded

    @property
    def config(self):
        return self.base.config

    @property
    def device(self) -> torch.device:
        return next(self.base.parameters()).device

    def names(self) -> list[str]:
        return [] if self.peft is None else [n for n in self.peft.peft_config]

    def load(self, name: str, path: str | Path) -> None:
        """Load a LoRA folder as adapter `name`. Raises AdapterError when it does not fit the model."""
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(path), adapter_name=name, is_trainable=False)
            else:
                self.peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatch, unknown target modules
            self._discard_partial(name)
            raise AdapterError(f"adapter '{name}' at {path} does not fit the model: {exc}", "path") from exc
        self.peft.eval()

    def unload(self, name: str) -> None:
        self.peft.delete_adapter(name)

    def _discard_partial(self, name: str) -> None:
        if self.peft is not None and name in self.peft.peft_config:
            self.peft.delete_adapter(name)

    @torch.inference_mode()
    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T)
        attention_mask: torch.Tensor,  # (B, 1, T, K) additive
        position_ids: torch.Tensor,  # (B, T)
        cache,
        adapters: list[str],  # one per row; BASE for none
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
        if self.peft is not None and self.peft.peft_config:
            # Always name adapters per row: without adapter_names peft would apply its *active* one to all rows.
            out = self.peft(**kwargs, adapter_names=adapters)
        else:
            out = self.base(**kwargs)
        return out.logits[:, -1, :]
