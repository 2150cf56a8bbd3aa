"""What doctor rows inside vLLM's own batch would cost: the ceiling of that design on this machine.

Each of `c` patient requests runs beside k companion requests carrying a LoRA doctor (the rows a
doctor would add to vLLM's forward), with nothing keeping them in step: no rule, no processor, so
this is an upper bound on what "doctors as LoRA rows in vLLM's batch" could reach. Prints patient
tokens/s and the ratio to the patients alone, for k = 1 and 2, and c-with-2c-rows for comparison
(the same number of rows with no LoRA). README, "Benchmarks", explains why the engine does not run
doctors this way (vLLM's scheduler does not keep requests together).

    python benchmarks/bench_vllm_companion_rows.py                    # random r16 q/v doctor
    python benchmarks/bench_vllm_companion_rows.py --doctor FOLDER    # a trained doctor
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import torch

from bench_vllm_engine import random_lora

from llmdoctor.server.model_store import default_cache_dir, resolve_model


async def patient_tokens_per_s(llm, doctor: str, concurrency: int, companions: int, prompt_len: int,
                               max_tokens: int) -> float:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import RequestOutputKind

    async def one(i: int, lora: int) -> int:
        g = torch.Generator().manual_seed(i)
        prompt = [int(t) for t in torch.randint(100, 49152, (prompt_len,), generator=g)]
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, detokenize=False,
                                output_kind=RequestOutputKind.DELTA)
        request = LoRARequest(f"doctor{lora}", lora, doctor) if lora else None
        n = 0
        async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params,
                                      f"r{time.monotonic_ns()}-{i}-{lora}", lora_request=request):
            n += len(out.outputs[0].token_ids)
        return 0 if lora else n  # companions' tokens do not count

    start = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(i, k) for i in range(concurrency) for k in range(companions + 1))))
    return tokens / (time.perf_counter() - start)


async def run(args) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    model = resolve_model(args.model, default_cache_dir())
    doctor = args.doctor or str(random_lora(model, Path(tempfile.mkdtemp(prefix="llmdoctor-bench-")) / "d", 1))
    llm = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=str(model.folder), dtype="float32", max_model_len=2048, max_num_seqs=4 * max(args.concurrency),
        enforce_eager=True, enable_prefix_caching=False, enable_lora=True, max_lora_rank=args.max_lora_rank, max_loras=4))
    try:
        await patient_tokens_per_s(llm, doctor, 2, 1, args.prompt_len, 8)  # warm-up
        print(f"{model.name}, CPU float32, prompt {args.prompt_len}, {args.max_tokens} new tokens, greedy; "
              f"doctor {doctor}, max_lora_rank {args.max_lora_rank}; patient tokens/s, best of {args.repeats}")
        for c in args.concurrency:
            async def best(k: int, rows: int = c) -> float:
                return max([await patient_tokens_per_s(llm, doctor, rows, k, args.prompt_len, args.max_tokens)
                            for _ in range(args.repeats)])
            alone = await best(0)
            doubled = await best(0, 2 * c) / 2  # 2c plain rows, per c patients: the rows' cost without LoRA
            one, two = await best(1), await best(2)
            print(f"c={c:<3} alone {alone:6.1f} | 2c plain rows {doubled:6.1f} ({doubled / alone:.2f}x) | "
                  f"1 companion {one:6.1f} ({one / alone:.2f}x) | 2 companions {two:6.1f} ({two / alone:.2f}x)",
                  flush=True)
    finally:
        llm.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--doctor", help="a LoRA folder on the model (default: a random r16 q/v LoRA)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-lora-rank", type=int, default=16,
                        help="vLLM pads every LoRA to this rank, so it sets the LoRA cost (the doctor here is r16)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
