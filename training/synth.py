"""`llmdoctor data synth`: sample K completions per prompt from the patient, rank them with a
scorer, and write a preference file that `llmdoctor train dpo|gdpo` reads.

Rows (JSONL, one per prompt; the prompt is the plain user text, so the trainer applies the chat
template it trains with, the same one used here to sample):
- pairwise: {"prompt", "chosen" (best-scored), "rejected" (worst-scored), "meta"}
- ranked:   {"prompt", "responses" (best-first), "scores" (same order), "meta"}
`meta` = {"scorer", "scores" (best-first), "model", "truncated" (best-first: which responses were
cut at --max-tokens rather than ended by the model; training gives those no end-of-turn token),
"sentence_cut" (with --sentence-cuts: the chosen response is the rejected one ended after its first
sentence)}. Empty responses and repeats of the same text
are dropped first (the trainer's data checks would flag them), so a ranked row may hold fewer than
K; a prompt left with fewer than 2 responses, or whose responses all score the same, carries no
preference and is not written, in either format; nor, for the `length` scorer, one whose shortest
response was cut at --max-tokens (a cut length is only a lower bound); the summary counts these.

--sentence-cuts (the recipe's conciseness data): each sampled response also stands as a candidate
ended after its first sentence of at least MIN_CUT_WORDS words. A verbose patient rarely ends an
answer by itself within --max-tokens, so sampling alone gives few pairs that differ in where they
stop; a cut and its own full response share every token up to the cut and differ only in ending
there (end-of-turn) or going on, which is exactly the decision conciseness is about. When a cut
wins, the pair is (cut, its source), not (cut, some other response), to keep that shared prefix.

Resumable: rows are appended and flushed one by one, keyed by prompt; a rerun with the same
--output skips the prompts already there. Each response's seed derives from (--seed, prompt,
index), not from the order of the run, so an interrupted-and-resumed run writes what an
uninterrupted one would (and the rows do not depend on --max-batch either: seen equal at 16 and
32). Torch and transformers load inside `synthesize`, so the CLI builds its parser from this
module instantly.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from llmdoctor.server.errors import LLMDoctorError
from llmdoctor.server.jsonl_journal import whole_lines
from llmdoctor.server.model_store import ModelNotFoundError, resolve_model
from llmdoctor.training.scorers import SCORERS, Scorer, get_scorer

PROMPTS_FILE = Path(__file__).parent / "prompts" / "prompts.jsonl"
FORMATS = ("pairwise", "ranked")
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class SynthError(ValueError):
    """A user mistake (bad file, bad option); the message is one line naming it."""


@dataclass(frozen=True)
class SynthOptions:
    prompts: Path
    output: Path
    scorer: str = "sentiment"
    k: int = 4
    format: Literal["pairwise", "ranked"] = "pairwise"
    max_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0
    limit: int | None = None
    model: str | None = None  # None = the embedded default
    max_batch: int = 32  # engine rows decoded together (32 measured faster than 16 on 2 cores)
    progress_every: int = 10
    sentence_cuts: bool = False  # also offer each response ended after its first sentence (module doc)


@dataclass
class SynthStats:
    total: int = 0  # prompts this run had to do (after --limit and resume)
    already_done: int = 0
    written: int = 0
    no_preference: int = 0  # prompts not written: < 2 distinct non-empty responses, or all tied


# ---------------------------------------------------------------- files


def load_prompts(path: Path) -> list[str]:
    """Unique prompts, in file order, from a JSONL file of {"prompt": "..."} rows; blank lines skipped."""
    if not path.is_file():
        raise SynthError(f"--prompts {path}: no such file")
    prompts: dict[str, None] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SynthError(f"--prompts {path}: line {number} is not JSON ({exc.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt.strip():
            expected = '{"prompt": "Describe your ideal weekend."}'
            raise SynthError(f'--prompts {path}: line {number} needs a non-empty "prompt" string, e.g. {expected}')
        prompts[prompt] = None
    if not prompts:
        raise SynthError(f"--prompts {path}: the file has no prompts")
    return list(prompts)


def done_prompts(output: Path) -> set[str]:
    """Prompts already in `output`. A torn last line (a killed writer) is cut off, so appending is safe."""
    done = set()
    for number, line in enumerate(whole_lines(output).splitlines(), 1):  # a torn row's prompt is redone
        try:
            done.add(json.loads(line)["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise SynthError(f"--output {output}: line {number} is not a synth row; pick another --output") from None
    return done


# ---------------------------------------------------------------- ranking and rows


def response_seed(seed: int, prompt: str, index: int) -> int:
    """A per-response seed that depends on what is sampled, not on when (resume gives the same rows)."""
    return zlib.crc32(f"{seed}\0{index}\0{prompt}".encode())


def rank(responses: Iterable[str], scores: Iterable[float]) -> tuple[list[str], list[float]]:
    """Responses and scores sorted best-first (stable: ties keep sampling order)."""
    pairs = sorted(zip(responses, scores), key=lambda pair: -pair[1])
    return [r for r, _ in pairs], [s for _, s in pairs]


def distinct(responses: list[str], scores: list[float]) -> tuple[list[str], list[float]]:
    """Non-empty responses, each text once (first occurrence), with their scores."""
    seen: dict[str, float] = {}
    for response, score in zip(responses, scores):
        if response.strip() and response not in seen:
            seen[response] = score
    return list(seen), list(seen.values())


MIN_CUT_WORDS = 6
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]]|$)[\"')\]]*")


def sentence_cut(text: str, min_words: int = MIN_CUT_WORDS) -> str | None:
    """`text` ended after its first sentence of at least `min_words` words, or None when there is no
    such sentence end before the text's own end."""
    for end in _SENTENCE_END.finditer(text):
        head = text[: end.end()].rstrip()
        if len(head.split()) >= min_words:
            return head if text[end.end():].strip() else None
    return None


def make_row(prompt: str, responses: list[str], scores: list[float], fmt: str, scorer: str, model: str,
             cut: frozenset[str] = frozenset(), sources: dict[str, str] | None = None) -> dict | None:
    """The output row for one prompt, or None when it holds no preference (see the module doc).
    `cut`: the response texts that hit --max-tokens. `sources`: sentence cut -> the response it was
    cut from (--sentence-cuts); a winning cut is paired with its source."""
    sources = sources or {}
    ranked, ranked_scores = rank(*distinct(responses, scores))
    if len(ranked) < 2 or ranked_scores[0] == ranked_scores[-1]:
        return None
    if scorer == "length" and ranked[0] in cut:
        # A cut response's length is only a lower bound: when even the shortest was cut, nothing here
        # says which answer is more concise (the pair would teach noise).
        return None
    meta = {"scorer": scorer, "scores": ranked_scores, "model": model, "truncated": [r in cut for r in ranked]}
    if fmt == "pairwise":
        worst = ranked.index(sources[ranked[0]]) if ranked[0] in sources else len(ranked) - 1
        meta["truncated"] = [meta["truncated"][0], meta["truncated"][worst]]
        if ranked[0] in sources:
            meta["sentence_cut"] = True
        return {"prompt": prompt, "chosen": ranked[0], "rejected": ranked[worst], "meta": meta}
    return {"prompt": prompt, "responses": ranked, "scores": ranked_scores, "meta": meta}


def with_sentence_cuts(responses: list[str]) -> dict[str, str]:
    """cut -> source for every response that has a sentence cut (the first source wins a repeat)."""
    sources: dict[str, str] = {}
    for response in responses:
        head = sentence_cut(response)
        if head is not None and head not in sources:
            sources[head] = response
    return sources


# ---------------------------------------------------------------- sampling


class Sampler:
    """K seeded completions of one chat prompt, through the project's own torch engine."""

    def __init__(self, engine, prompt_tokenizer, options: SynthOptions):
        self.engine = engine
        self.prompt_tokenizer = prompt_tokenizer
        self.options = options
        self._request_ids = itertools.count()

    async def complete(self, prompt: str) -> tuple[list[str], frozenset[str]]:
        """K responses, and the ones cut at max_tokens (not ended by the model)."""
        ids = self.prompt_tokenizer.encode_chat([{"role": "user", "content": prompt}], True, False)
        done = await asyncio.gather(*(self._one(prompt, ids, i) for i in range(self.options.k)))
        return [text for text, _ in done], frozenset(text for text, cut in done if cut)

    async def _one(self, prompt: str, ids: list[int], index: int) -> tuple[str, bool]:
        from llmdoctor.server.engine.protocol import GenerateRequest, SamplingParams

        o = self.options
        sampling = SamplingParams(o.max_tokens, o.temperature, seed=response_seed(o.seed, prompt, index))
        request = GenerateRequest(f"synth-{next(self._request_ids)}", tuple(ids), sampling)
        tokens: list[int] = []
        finish = None
        async for event in self.engine.generate(request):
            if event.error:
                raise RuntimeError(f"the engine failed a request: {event.error}")
            tokens += event.token_ids
            finish = event.finish_reason or finish
        return self.prompt_tokenizer.tokenizer.decode(tokens, skip_special_tokens=True).strip(), finish == "length"


# ---------------------------------------------------------------- the job


def check_options(options: SynthOptions) -> None:
    """Option mistakes, found before anything slow starts."""
    if options.scorer not in SCORERS:
        raise SynthError(f"--scorer {options.scorer!r} is unknown; known: {', '.join(SCORERS)}")
    if options.format not in FORMATS:
        raise SynthError(f"--format {options.format!r} is unknown; known: {', '.join(FORMATS)}")
    if options.k < 2:
        raise SynthError(f"--k must be at least 2 (responses to rank per prompt), got {options.k}")
    if options.max_tokens < 1:
        raise SynthError(f"--max-tokens must be at least 1, got {options.max_tokens}")
    if options.temperature <= 0:
        raise SynthError(f"--temperature must be > 0 (0 is greedy: all {options.k} responses would be the same)")
    if options.limit is not None and options.limit < 1:
        raise SynthError(f"--limit must be at least 1, got {options.limit}")


def plan(options: SynthOptions) -> tuple[list[str], SynthStats]:
    """The prompts still to do, after --limit and what --output already holds."""
    check_options(options)
    prompts = load_prompts(options.prompts)[: options.limit]
    done = done_prompts(options.output)
    todo = [p for p in prompts if p not in done]
    return todo, SynthStats(total=len(todo), already_done=len(prompts) - len(todo))


class Progress:
    """A line on stderr every `every` prompts: count, prompts/s, ETA."""

    def __init__(self, total: int, every: int, stream=None):
        self.total, self.every, self.stream = total, max(1, every), stream or sys.stderr
        self.start()

    def start(self) -> None:
        """(Re)start the clock: call once the model is loaded, so rates measure sampling only."""
        self.started = time.monotonic()
        self.done = 0

    def step(self) -> None:
        self.done += 1
        if self.done % self.every == 0 or self.done == self.total:
            rate = self.done / max(time.monotonic() - self.started, 1e-9)
            eta = (self.total - self.done) / rate
            print(f"synth: {self.done}/{self.total} prompts, {rate:.2f} prompts/s, ETA {eta:.0f}s",
                  file=self.stream, flush=True)

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.started, 1e-9)


async def synthesize(options: SynthOptions, todo: list[str], stats: SynthStats, progress: Progress) -> None:
    """Sample, score and append a row per prompt; each row is flushed as soon as it is done."""
    from transformers import AutoTokenizer

    from llmdoctor.server.api.prompts import PromptTokenizer
    from llmdoctor.server.engine.torch_engine import TorchEngine

    # 1) engine and scorer
    model = resolve_model(options.model)
    scorer: Scorer = get_scorer(options.scorer)
    engine = TorchEngine(model, max_batch=options.max_batch, max_queue=max(64, 4 * options.max_batch))
    await engine.start()
    tokenizer = PromptTokenizer(AutoTokenizer.from_pretrained(model.folder), engine.max_model_len)
    sampler = Sampler(engine, tokenizer, options)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for prompt in todo:
        queue.put_nowait(prompt)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    progress.start()

    # 2) workers: enough prompts in flight to keep max_batch rows busy (continuous batching)
    async def worker(out) -> None:
        while not queue.empty():
            prompt = queue.get_nowait()
            responses, cut = await sampler.complete(prompt)
            sources = with_sentence_cuts(responses) if options.sentence_cuts else {}
            responses = responses + [c for c in sources if c not in responses]
            scores = [scorer(prompt, r) for r in responses]
            row = make_row(prompt, responses, scores, options.format, options.scorer, model.name, cut, sources)
            if row is None:
                stats.no_preference += 1
            else:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")  # one write per row: never torn by Ctrl+C
                out.flush()
                stats.written += 1
            progress.step()

    workers = max(1, -(-options.max_batch // options.k)) + 1
    try:
        with options.output.open("a", encoding="utf-8") as out:
            await asyncio.gather(*(worker(out) for _ in range(min(workers, len(todo)))))
    finally:
        await engine.shutdown(grace_seconds=0)


def run(options: SynthOptions, stream=None) -> int:
    """The CLI driver: plan, synthesize, summarise. Returns the exit status; messages go to `stream`
    (default stderr)."""
    stream = stream or sys.stderr
    try:
        todo, stats = plan(options)
    except SynthError as exc:
        print(f"llmdoctor data synth: {exc}", file=stream)
        return EXIT_USAGE
    if stats.already_done:
        print(f"synth: {stats.already_done} prompts already in {options.output}; skipping them", file=stream)
    progress = Progress(stats.total, options.progress_every, stream)
    try:
        if todo:
            asyncio.run(synthesize(options, todo, stats, progress))
    except KeyboardInterrupt:
        print(f"synth: interrupted; {stats.written} rows written to {options.output}. "
              "Run the same command again to continue.", file=stream)
        return EXIT_INTERRUPTED
    except (ModelNotFoundError, LLMDoctorError) as exc:  # a bad --model, a prompt over the context
        print(f"llmdoctor data synth: {exc}", file=stream)
        return EXIT_USAGE
    print(f"synth: wrote {stats.written} rows to {options.output} ({stats.no_preference} prompts skipped: "
          f"no preference among their responses; {stats.already_done} already done; "
          f"{progress.rate:.2f} prompts/s)", file=stream)
    return 0


# ---------------------------------------------------------------- CLI


def add_synth_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompts", type=Path, default=PROMPTS_FILE,
                        help='JSONL file of {"prompt": "..."} rows (default: the shipped prompt file)')
    parser.add_argument("--output", type=Path, required=True,
                        help="preference JSONL to write; rerunning with the same file resumes")
    parser.add_argument("--scorer", default="sentiment", help=f"how to rank responses: {', '.join(SCORERS)}")
    parser.add_argument("--k", type=int, default=4, help="responses sampled per prompt (>= 2)")
    parser.add_argument("--format", default="pairwise", help=f"{' or '.join(FORMATS)} (ranked feeds GDPO)")
    parser.add_argument("--max-tokens", type=int, default=48, help="tokens per response")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (> 0)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; same seed = same responses")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--model", default=None, help="patient: 'embedded' (default), a folder or a .gguf")
    parser.add_argument("--max-batch", type=int, default=32, help="engine rows decoded together")
    parser.add_argument("--progress-every", type=int, default=10, help="a progress line every N prompts")
    parser.add_argument("--sentence-cuts", action="store_true",
                        help="also rank each response ended after its first sentence (conciseness data)")


def options_from_args(args: argparse.Namespace) -> SynthOptions:
    return SynthOptions(
        prompts=args.prompts, output=args.output, scorer=args.scorer, k=args.k, format=args.format,
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed, limit=args.limit,
        model=args.model, max_batch=args.max_batch, progress_every=args.progress_every,
        sentence_cuts=args.sentence_cuts,
    )


def run_synth(args: argparse.Namespace) -> int:
    return run(options_from_args(args))
