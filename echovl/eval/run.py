"""The evaluation run: benchmarks x models -> samples, grades, the table (``python -m echovl.eval``).

1. Every input is checked before any generation: benchmark files (columns, rows, images) and model folders.
2. Per model and benchmark, the samples already in the cache (:mod:`echovl.eval.store`) are read back; the missing
   ones are generated in calls of whole problems (a fixed partition of the benchmark, so an interrupted run
   resumed gives the samples an uninterrupted one would), graded with :func:`echovl.reward.judge` and appended to
   the cache after each call.
3. ``OUT/<model>/samples.jsonl`` per model, then ``OUT/results.json``, ``OUT/results.csv`` and ``OUT/table.md``
   (each written atomically), and the table on stdout.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..reward.math import GRADER_VERSION, judge
from .backends import Backend, Sampling, load_backend, mix_seed
from .benchmarks import Benchmark, EvalError, load_benchmarks
from .checkpoints import ModelRef, resolve_model
from .prompts import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, PromptBuilder
from .report import csv_text, markdown_table, summarize
from .store import SampleStore, atomic_write, cache_key

__all__ = ["DEFAULT_FORMAT_PROMPT", "EvalConfig", "evaluate", "read_training_config"]

DEFAULT_FORMAT_PROMPT = Path(__file__).resolve().parents[2] / "configs" / "format_prompt" / "math_think.jinja"
"""The format prompt of the repository's training configs (``data.format_prompt``)."""

_VLLM_CALL_PROMPTS = 2048  # prompts per vLLM call (each with its k samples): every benchmark but MMLU-Pro in one call


@dataclass
class EvalConfig:
    models: list[str]
    """Model folders, EasyR1 checkpoints or hub names, each optionally ``NAME=PATH``; the first is the baseline."""
    benchmarks: list[str]
    """Benchmark parquet files or folders, each file optionally ``NAME=FILE``."""
    out: Path
    """Output folder (samples, results, table; the resume cache in ``OUT/.cache``)."""
    backend: str = "auto"
    """``auto`` (vLLM when installed and a GPU is visible, else transformers), ``vllm`` or ``transformers``."""
    k: int | None = None
    """Samples per problem for every benchmark (default: per benchmark, 32 for AIME24/AIME25/AMC, else 1)."""
    k_per_benchmark: dict[str, int] = field(default_factory=dict)
    """Samples per problem for named benchmarks (over ``k``)."""
    temperature: float = 0.6
    top_p: float = 1.0
    max_new_tokens: int = 8192
    greedy: bool = False
    """Greedy decoding (temperature 0, one sample per problem)."""
    seed: int = 0
    limit: int | None = None
    """Only the first ``limit`` problems of each benchmark."""
    batch_size: int = 16
    """transformers: sequences per ``generate`` batch."""
    format_prompt: str | None = str(DEFAULT_FORMAT_PROMPT)
    """Jinja file applied to each problem (training's ``data.format_prompt``); None: the bare problem."""
    min_pixels: int | None = DEFAULT_MIN_PIXELS
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    prompt_key: str = "problem"
    answer_key: str = "answer"
    image_key: str = "images"
    ood: list[str] | None = None
    """Out-of-distribution benchmarks (default: ARC-c, GPQA-diamond, MMLU-Pro)."""
    bootstrap: int = 10000
    """Bootstrap resamples for the intervals."""
    confidence: float = 0.95
    show_progress: bool | None = None
    """Progress bars (default: when stderr is a terminal)."""
    device: str | None = None
    """transformers: ``cuda`` / ``cpu`` (default: CUDA when visible)."""
    tensor_parallel_size: int | None = None
    """vLLM: GPUs per model (default: all visible)."""
    gpu_memory_utilization: float = 0.85
    """vLLM: fraction of GPU memory for weights and KV cache."""

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if not self.models:
            raise EvalError("no --model given")
        if self.backend not in ("auto", "vllm", "transformers"):
            raise EvalError(f"unknown backend {self.backend!r} (auto, vllm or transformers)")
        for what, value in [("k", self.k), *((f"k for {n}", v) for n, v in self.k_per_benchmark.items())]:
            if value is not None and value < 1:
                raise EvalError(f"{what} must be >= 1, got {value}")
        if self.limit is not None and self.limit < 1:
            raise EvalError(f"--limit must be >= 1, got {self.limit}")
        if self.batch_size < 1:
            raise EvalError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.bootstrap < 100:
            raise EvalError(f"--bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if not 0 < self.confidence < 1:
            raise EvalError(f"--confidence must be in (0, 1), got {self.confidence}")
        if self.format_prompt is not None and not Path(self.format_prompt).is_file():
            raise EvalError(f"format prompt {self.format_prompt} not found (pass --format-prompt FILE or none)")
        self.sampling()  # validates temperature, top_p, max_new_tokens

    def sampling(self, n: int = 1) -> Sampling:
        temperature = 0.0 if self.greedy else self.temperature
        return Sampling(n, temperature, self.top_p, self.max_new_tokens, self.seed)

    def samples_per_problem(self, benchmark: Benchmark) -> int:
        if self.greedy:
            return 1
        return self.k_per_benchmark.get(benchmark.name, self.k or benchmark.default_k)


def read_training_config(path: str | Path) -> dict[str, Any]:
    """The prompt settings of an EasyR1 training YAML (``data.format_prompt``, ``min_pixels``, ``max_pixels``,
    ``prompt_key``, ``answer_key``, ``image_key``) as :class:`EvalConfig` fields; relative paths stay relative to
    the working directory, as EasyR1 reads them."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = (yaml.safe_load(handle) or {}).get("data") or {}
    except (OSError, yaml.YAMLError, AttributeError) as exc:
        raise EvalError(f"cannot read the training config {path}: {exc}") from exc
    fields = {}
    for key in ("format_prompt", "min_pixels", "max_pixels", "prompt_key", "answer_key", "image_key"):
        if key in data:
            fields[key] = data[key]
    return fields


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("_") or "model"


def _progress(total: int, desc: str, enable: bool | None):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="samples", disable=None if enable is None else not enable, leave=False)


class _Evaluation:
    def __init__(self, config: EvalConfig, backend_factory: Callable[..., Backend] | None):
        self.config = config
        self.backend_factory = backend_factory or load_backend
        fp = config.format_prompt
        self.format_prompt = Path(fp).read_text(encoding="utf-8") if fp else None
        self.benchmarks = load_benchmarks(
            config.benchmarks,
            prompt_key=config.prompt_key,
            answer_key=config.answer_key,
            image_key=config.image_key,
            ood=config.ood,
        )
        if config.k_per_benchmark:
            unknown = sorted(set(config.k_per_benchmark) - {b.name for b in self.benchmarks})
            if unknown:
                raise EvalError(f"--k names {', '.join(unknown)}, not among the benchmarks")
        self.models = [resolve_model(spec) for spec in config.models]
        names = [m.name for m in self.models]
        slugs = [_slug(n) for n in names]
        if len(set(slugs)) != len(slugs):
            raise EvalError(f"two models would share a name ({', '.join(names)}): name them with --model NAME=PATH")
        self.prompt_settings = dict(
            format_prompt=self.format_prompt,
            min_pixels=config.min_pixels,
            max_pixels=config.max_pixels,
            prompt_key=config.prompt_key,
            answer_key=config.answer_key,
            image_key=config.image_key,
        )

    def sampling_settings(self, backend: str) -> dict:
        c = self.config
        return dict(
            backend=backend,
            temperature=0.0 if c.greedy else c.temperature,
            top_p=c.top_p,
            max_new_tokens=c.max_new_tokens,
            seed=c.seed,
        )

    def store(self, model: ModelRef, bench: Benchmark, backend: str) -> SampleStore:
        parts = dict(
            model=model.fingerprint,
            benchmark=bench.content_hash,
            sampling=self.sampling_settings(backend),
            prompt=self.prompt_settings,
        )
        describe = dict(parts, model_name=model.name, model_path=model.path, benchmark_name=bench.name)
        path = self.config.out / ".cache" / _slug(model.name) / f"{bench.name}.{cache_key(**parts)}.jsonl"
        return SampleStore(path, describe)

    def backend_name(self) -> str:
        from .backends import vllm_available

        if self.config.backend == "auto":
            return "vllm" if vllm_available() else "transformers"
        return self.config.backend

    def load(self, model: ModelRef, backend_name: str) -> tuple[Backend, PromptBuilder]:
        """The model's backend and the prompt builder on its tokenizer and processor."""
        c = self.config
        backend = self.backend_factory(
            backend_name,
            model.path,
            batch_size=c.batch_size,
            device=c.device,
            tensor_parallel_size=c.tensor_parallel_size,
            max_images=max((len(p.images or ()) for b in self.benchmarks for p in b.problems), default=1),
            show_progress=sys.stderr.isatty() if c.show_progress is None else c.show_progress,
            engine_kwargs={"gpu_memory_utilization": c.gpu_memory_utilization, "seed": c.seed},
        )
        builder = PromptBuilder(
            backend.tokenizer,
            backend.processor,
            format_prompt=self.format_prompt,
            min_pixels=c.min_pixels,
            max_pixels=c.max_pixels,
        )
        return backend, builder

    def generate(self, backend, builder, model, bench, chunk, missing: dict[int, list[int]]) -> list[dict]:
        """Generate and grade the missing samples of the problems in ``chunk``: graded records."""
        prompts = [builder.build(p.problem, p.images, multimodal=bench.multimodal) for p in chunk]
        records = []
        # problems missing the same samples go together (all of them, unless k grew since the last run)
        for wanted in sorted({tuple(missing[p.index]) for p in chunk}):
            group = [(p, prompt) for p, prompt in zip(chunk, prompts) if tuple(missing[p.index]) == wanted]
            seeds = [mix_seed(int(bench.content_hash[:12], 16), p.index, wanted[0]) for p, _ in group]
            texts = backend.generate([prompt for _, prompt in group], self.config.sampling(len(wanted)), seeds=seeds)
            for (p, prompt), responses in zip(group, texts):
                for j, response in zip(wanted, responses):
                    verdict = judge(response, p.answer, think_opened=prompt.think_opened)
                    records.append(self.record(model, bench, p, j, prompt.text, response, verdict))
        return records

    def run_model(self, model: ModelRef, backend_name: str) -> list[dict]:
        """Every sample of ``model`` (read from the cache, or generated, graded and cached), in benchmark order."""
        c = self.config
        backend = builder = None
        samples: list[dict] = []
        for bench in self.benchmarks:
            k = c.samples_per_problem(bench)
            problems = bench.limited(c.limit)
            store = self.store(model, bench, backend_name)
            have = store.load()
            missing = {p.index: [j for j in range(k) if (p.index, j) not in have] for p in problems}
            bar = _progress(sum(map(len, missing.values())), f"{model.name} {bench.name}", c.show_progress)
            # calls over a fixed partition of the benchmark: a resumed run makes the calls an uninterrupted one makes
            call = max(1, c.batch_size // k) if backend_name == "transformers" else _VLLM_CALL_PROMPTS
            for start in range(0, len(problems), call):
                chunk = [p for p in problems[start : start + call] if missing[p.index]]
                if not chunk:
                    continue
                if backend is None:
                    backend, builder = self.load(model, backend_name)
                if hasattr(backend, "on_batch"):
                    backend.on_batch = bar.update
                records = self.generate(backend, builder, model, bench, chunk, missing)
                store.append(records)
                if not hasattr(backend, "on_batch"):
                    bar.update(len(records))
                have.update(((r["problem_index"], r["sample"]), r) for r in records)
            bar.close()
            samples += [self.regraded(have[(p.index, j)]) for p in problems for j in range(k)]
        if backend is not None and hasattr(backend, "close"):
            backend.close()  # free the model (GPU memory) before the next one
        return samples

    @staticmethod
    def record(model: ModelRef, bench: Benchmark, p, j: int, prompt: str, response: str, verdict) -> dict:
        return {
            "model": model.name,
            "benchmark": bench.name,
            "problem_id": p.id,
            "problem_index": p.index,
            "sample": j,
            "prompt": prompt,
            "response": response,
            "answer": verdict.answer,
            "reference": p.answer,
            "correct": bool(verdict.correct),
            "grader": GRADER_VERSION,
        }

    @staticmethod
    def regraded(record: dict) -> dict:
        """The record graded by this grader (a cache written by an older grader is graded again, not resampled)."""
        if record.get("grader") == GRADER_VERSION:
            return record
        think_opened = record["prompt"].rstrip().endswith("<think>")
        verdict = judge(record["response"], record["reference"], think_opened=think_opened)
        return dict(record, answer=verdict.answer, correct=bool(verdict.correct), grader=GRADER_VERSION)


def evaluate(config: EvalConfig, *, backend_factory: Callable[..., Backend] | None = None) -> dict[str, Any]:
    """Run the evaluation of ``config``; returns ``results.json``'s content (also written to ``config.out``).

    ``backend_factory(name, model_path, **options)`` builds a generation backend (default
    :func:`echovl.eval.backends.load_backend`); tests pass fakes.
    """
    run = _Evaluation(config, backend_factory)
    backend_name = run.backend_name()
    samples: dict[str, list[dict]] = {}
    for model in run.models:
        samples[model.name] = run.run_model(model, backend_name)
        text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples[model.name])
        atomic_write(config.out / _slug(model.name) / "samples.jsonl", text)
    ks = {b.name: config.samples_per_problem(b) for b in run.benchmarks}
    problems = {b.name: len(b.limited(config.limit)) for b in run.benchmarks}
    settings = dict(
        asdict(config),
        out=str(config.out),
        backend=backend_name,
        sampling=run.sampling_settings(backend_name),
        grader_version=GRADER_VERSION,
    )
    results = summarize(
        run.benchmarks,
        [{"name": m.name, "path": m.path} for m in run.models],
        samples,
        ks=ks,
        problems=problems,
        resamples=config.bootstrap,
        confidence=config.confidence,
        seed=config.seed,
        settings=settings,
    )
    table = markdown_table(results)
    atomic_write(config.out / "results.json", json.dumps(results, indent=2) + "\n")
    atomic_write(config.out / "results.csv", csv_text(results))
    atomic_write(config.out / "table.md", table)
    print(table, end="", file=sys.stdout)
    return results
