"""The torch engine and the doctor runner at realistic sizes (random weights: speed only).

Builds a ~1.1 B Llama-shaped patient and a ~0.11 B doctor base (1/10 of it), saves them as
transformers folders with the embedded model's tokenizer, and measures in one run, tokens/s at
each concurrency for: the patient unguided; guided by a LoRA doctor on the patient itself (an
equal-size doctor whose rows share the patient's forward); guided by a LoRA doctor on the 1/10
base (its own batched pass). Also transformers `generate()` unguided, as the baseline users know.

    python benchmarks/bench_torch_engine_gpu.py --tokenizer DIR            # GPU, bf16
    python benchmarks/bench_torch_engine_gpu.py --tokenizer DIR --tiny     # CPU smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from engine_load import throughput

from llmdoctor.server.engine.protocol import DoctorWeight, Guidance
from llmdoctor.server.engine.torch_engine import TorchEngine
from llmdoctor.server.model_store import ResolvedModel

VOCAB = 49152  # the embedded model's tokenizer
SHAPES = {  # hidden, layers, heads, kv heads, intermediate
    "patient": (2048, 16, 32, 8, 8192),  # ~1.07 B
    "doctor": (768, 12, 12, 4, 2048),  # ~0.11 B
    "tiny-patient": (128, 2, 4, 2, 256),
    "tiny-doctor": (64, 2, 2, 1, 128),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def build_model(shape: str, folder: Path, tokenizer: Path, device: str, dtype: torch.dtype) -> ResolvedModel:
    hidden, layers, heads, kv, inter = SHAPES[shape]
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=inter, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).is_file():
            shutil.copy(tokenizer / name, folder / name)
    params = sum(p.numel() for p in model.parameters()) / 1e9
    print(f"{shape}: {params:.3f} B parameters", flush=True)
    return ResolvedModel(name=shape, folder=folder)


def build_lora(model: ResolvedModel, folder: Path, device: str, dtype: torch.dtype) -> Path:
    base = LlamaForCausalLM.from_pretrained(model.folder, dtype=dtype).to(device)
    lora = get_peft_model(base, LoraConfig(r=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(folder, save_embedding_layers=False)
    return folder


def generate_throughput(model: ResolvedModel, device, dtype, concurrency, prompt_len, max_tokens) -> float:
    hf = LlamaForCausalLM.from_pretrained(model.folder, dtype=dtype).to(device).eval()
    ids = torch.randint(3, VOCAB, (concurrency, prompt_len), device=device)
    kwargs = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=2)
    hf.generate(ids[:, :8], max_new_tokens=4, do_sample=False, pad_token_id=2)  # warm-up
    _sync(device)
    start = time.perf_counter()
    out = hf.generate(ids, **kwargs)
    _sync(device)
    return (out.shape[1] - prompt_len) * concurrency / (time.perf_counter() - start)


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


async def run(args):
    dtype = getattr(torch, args.dtype)
    work = Path(tempfile.mkdtemp(prefix="llmdoctor-gpu-bench-"))
    prefix = "tiny-" if args.tiny else ""
    patient = build_model(prefix + "patient", work / "patient", args.tokenizer, args.device, dtype)
    small = build_model(prefix + "doctor", work / "doctor", args.tokenizer, args.device, dtype)
    same_size_doctor = build_lora(patient, work / "lora_same", args.device, dtype)
    tenth_doctor = build_lora(small, work / "lora_tenth", args.device, dtype)
    rows = {}
    cs = args.concurrency

    rows["transformers generate, unguided"] = {
        c: (generate_throughput(patient, args.device, dtype, c, args.prompt_len, args.max_tokens), None) for c in cs
    }
    print(rows, flush=True)
    settings = [
        ("engine, unguided", None, Guidance()),
        ("engine, equal-size doctor (shared rows)", None, Guidance(doctors=(DoctorWeight("same", 0.5),))),
        ("engine, 1/10-size doctor (own pass)", small, Guidance(doctors=(DoctorWeight("tenth", 0.5),))),
    ]
    engines = {}
    for label, doctor_base, guidance in settings:
        key = doctor_base.name if doctor_base else "shared"
        if key not in engines:
            engine = TorchEngine(patient, max_batch=max(cs), doctor_base=doctor_base, device=args.device, dtype=dtype,
                                 max_model_len=args.prompt_len + args.max_tokens + 8)
            await engine.start()
            if doctor_base is None:
                await engine.load_adapter("same", str(same_size_doctor), "doctor")
            else:
                await engine.load_adapter("tenth", str(tenth_doctor), "doctor")
            await throughput(engine, guidance, 2, 8, 4, VOCAB)  # warm-up
            engines[key] = engine
        rows[label] = {c: await throughput(engines[key], guidance, c, args.prompt_len, args.max_tokens, VOCAB) for c in cs}
        print(label, rows[label], flush=True)
    for engine in engines.values():
        await engine.shutdown(0)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\n{name}, {args.dtype}, prompt {args.prompt_len} tokens, {args.max_tokens} new tokens, greedy")
    print(f"{'setting':<42}" + "".join(f"{'c=' + str(c):>18}" for c in cs) + "   tok/s (mean TTFT ms)")
    for label, row in rows.items():
        cells = "".join(f"{tps:10.1f}" + (f" ({ttft * 1000:5.0f})" if ttft is not None else " " * 8) for tps, ttft in row.values())
        print(f"{label:<42}{cells}")
    base = rows["engine, unguided"]
    print("\nratios to the engine unguided")
    for label in list(rows)[2:]:
        print(f"  {label:<42}" + "".join(f"{rows[label][c][0] / base[c][0]:10.2f}" for c in cs))
    print("  engine unguided / transformers generate   " + "".join(
        f"{base[c][0] / rows['transformers generate, unguided'][c][0]:10.2f}" for c in cs))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", type=Path, required=True, help="folder holding tokenizer.json etc.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="toy sizes, to check the script on a CPU")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
