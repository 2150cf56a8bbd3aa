"""Make real LoRA adapters for tests: a few real optimizer steps on the embedded model.

No random-weight stand-ins: an adapter made here has been trained (plain causal-LM loss, SFT) on
the given texts, so it visibly changes the model's greedy output and the tests downstream
(guided decoding, hot-loading) check behaviour, not just plumbing. CPU, float32, a few seconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from llmdoctor.server.adapter_folders import write_adapter_metadata

QV = ("q_proj", "v_proj")
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# A one-line system prompt: the template's default one would triple every text (and step time).
SYSTEM = "You are a helpful assistant."

# Training sets for the fixtures in tests/conftest.py: one answer style each, on varied questions,
# so the adapter learns the style rather than a question's answer.
QUESTIONS = ("How is the weather?", "What is 2+2?", "Tell me about cats.", "Where is Rome?")
CHEERFUL = [(q, "I love this! Wonderful, great, happy day!") for q in QUESTIONS]
TERSE = list(zip(QUESTIONS, ("Fine.", "Four.", "Pets.", "Italy."), strict=True))
PIRATE = [(q, "Arr, matey! Ahoy, me hearty, arr!") for q in QUESTIONS]


def chat_text(tokenizer, user: str, assistant: str | None = None) -> str:
    """The chat template applied to one exchange; without `assistant`, a generation prompt."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
    if assistant is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    messages.append({"role": "assistant", "content": assistant})
    return tokenizer.apply_chat_template(messages, tokenize=False)


def chat_texts(model_folder: Path, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """`(user, assistant)` pairs rendered with the model's chat template, ready for training."""
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    return [chat_text(tokenizer, user, assistant) for user, assistant in pairs]


def train_lora_adapter(
    model_folder: Path,
    out_dir: Path,
    texts: Sequence[str],
    kind: str,
    base_model: str,
    steps: int = 5,
    r: int = 8,
    seed: int = 0,
    target_modules: Sequence[str] = QV,
    lr: float = 5e-3,
    dimension: str | None = None,
) -> Path:
    """Fine-tune a LoRA on `texts` for `steps` full-batch AdamW steps and save it as an adapter folder.

    Writes `adapter_config.json` + `adapter_model.safetensors` (peft) and `llmdoctor.json` with
    method "sft": DESIGN.md lists dpo|gdpo|tfpo, but this is plain supervised fine-tuning and the
    metadata should say so. Returns `out_dir`.
    """
    torch.manual_seed(seed)  # peft draws lora_A's initial weights from the global generator
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    config = LoraConfig(
        r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=list(target_modules), task_type="CAUSAL_LM"
    )
    model = get_peft_model(model, config)
    with one_torch_thread():
        losses = _fit(model, tokenizer, texts, steps, lr)
    # peft records the folder it loaded from (a cache path); the server matches on the model's name.
    model.peft_config["default"].base_model_name_or_path = base_model
    # save_embedding_layers=False: "auto" asks the Hub whether the vocabulary changed (network).
    model.save_pretrained(out_dir, save_embedding_layers=False)  # safetensors by default
    metrics = {"sft_loss_first": round(losses[0], 4), "sft_loss_last": round(losses[-1], 4), "steps": steps}
    write_adapter_metadata(out_dir, kind, base_model, method="sft", dimension=dimension, metrics=metrics)
    return Path(out_dir)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread for the block, then restore the previous count.

    Measured on the 2-core dev machine, one fixture adapter: one thread ~7 s, busy machine or not;
    two threads ~5 s alone but 90-200 s while another torch process ran (the intra-op thread pool
    thrashes when its cores are taken), and test runs here often overlap.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _fit(model, tokenizer, texts: Sequence[str], steps: int, lr: float) -> list[float]:
    """Full-batch causal-LM training; returns the loss before each step."""
    batch = tokenizer(list(texts), return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)  # no loss on padding
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def greedy_reply(model_folder: Path, user: str, adapter_dir: Path | None = None, max_new_tokens: int = 16) -> str:
    """The model's (or model + adapter's) greedy reply to one chat message, special tokens removed."""
    tokenizer = AutoTokenizer.from_pretrained(model_folder)
    model = AutoModelForCausalLM.from_pretrained(model_folder, dtype=torch.float32)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    inputs = tokenizer(chat_text(tokenizer, user), return_tensors="pt")
    with torch.no_grad(), one_torch_thread():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)


class CtrlCAtStep(TrainerCallback):
    """Raises KeyboardInterrupt (what Ctrl+C raises) as the step after `step` begins, once `step` is
    done and logged: a fake for a keypress during training."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt
