"""The evaluation run: benchmarks x models -> samples, grades, the table (``python -m echovl.eval``).

1. Every input is checked before any generation: benchmark files (columns, rows, images) and model folders (a hub
   name is pinned to the commit it resolves to). A benchmark set with some but not all of the paper's nine text
   benchmarks is a warning (its averages are not the paper's).
2. Per model, the samples already in the cache (:mod:`echovl.eval.store`) are read back. The prompts of the missing
   ones are built and checked against the model's context before the first generation call (a prompt too long is
   an error naming its file, row and problem id). They are generated in calls of whole problems, graded with
   :func:`echovl.reward.judge` and appended to the cache after each call:

   - vLLM: the requests of all benchmarks together, each problem with its own ``k`` (``SamplingParams(n=k)``), in
     calls of up to :data:`_VLLM_CALL_SEQUENCES` sequences; each request has its own seed, so its random draws do
     not depend on how the calls are cut (its numbers may still vary in the last bits with what it is batched
     with, as vLLM's always may).
   - transformers: per benchmark, calls over a fixed partition of its problems (``batch_size // k`` problems), so a
     resumed run makes the calls an uninterrupted one makes and gives the same samples.
3. All the outputs at once (:func:`echovl.outputs.write_files`): ``OUT/<model>/samples.jsonl`` for every
   model, ``OUT/results.csv``, ``OUT/table.md`` and ``OUT/results.json``; then the table on stdout. A run that fails
   or is killed before this step leaves the outputs of the previous run as they were (and its samples in the cache).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cli import option, progress_bar
from ..inference import (
    Backend,
    InferenceError,
    Prompt,
    PromptBuilder,
    Sampling,
    load_backend,
    mix_seed,
    token_budget,
)
from ..outputs import write_files
from ..reward.math import GRADER_VERSION, judge
from .benchmarks import KNOWN_BENCHMARKS, Benchmark, EvalError, Problem, load_benchmarks
from .checkpoints import ModelRef, resolve_model
from .report import csv_text, markdown_table, summarize
from .settings import GENERATION, ModelRunConfig
from .store import SampleStore, cache_key

__all__ = ["PAPER_TEXT_BENCHMARKS", "EvalConfig", "evaluate", "paper_set_warnings"]

_VLLM_CALL_SEQUENCES = 16384
"""Most sequences (problems x samples) per vLLM call, all benchmarks together. vLLM schedules a call's requests
itself, so a large call keeps the GPU busy until its end; the cap exists for resuming and memory only: samples reach
the cache when their call returns (a kill loses the call in flight), and one call's responses (up to 8192 tokens
each) are held in memory (every missing prompt of the model, images included, is built before the first call).
16384 takes the text table without MMLU-Pro (7393 samples) in one call and with it in one or two."""

PAPER_TEXT_BENCHMARKS = [info for info in KNOWN_BENCHMARKS.values() if info.name != "geometry3k"]
"""The paper's text table: LUFFY's six in-distribution and three out-of-distribution benchmarks."""


def _k_spec(value: str) -> tuple[str | None, int]:
    """``--k``: ``K`` (every benchmark) or ``NAME=K`` -> ``(NAME or None, K)``."""
    name, _, number = value.rpartition("=")
    try:
        return (name or None), int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or NAME=K with an integer K, got {value!r}") from None


class _SetK(argparse.Action):
    """``--k K`` sets ``k``, ``--k NAME=K`` one entry of ``k_per_benchmark`` (the last one given wins)."""

    def __call__(self, parser, namespace, value, option_string=None):
        name, k = value
        if name is None:
            namespace.k = k
        else:
            namespace.k_per_benchmark = {**namespace.k_per_benchmark, name: k}


@dataclass
class EvalConfig(ModelRunConfig):
    """The evaluation's settings: ``python -m echovl.eval``'s options (with those of :class:`ModelRunConfig`)."""

    models: list[str] = option(
        flags=["--model"],
        action="append",
        metavar="[NAME=]PATH",
        help="a Hugging Face model folder, an EasyR1 checkpoint (global_step_N or its actor folder) or a hub name; "
        "repeat for an A/B (the first is the baseline)",
    )
    benchmarks: list[str] = option(
        action="extend",
        nargs="+",
        metavar="[NAME=]FILE_OR_FOLDER",
        help="benchmark parquet files or folders (data_prep's outputs: data/openr1_math/benchmarks, "
        "data/geometry3k/test.parquet); a file's data_source values are its benchmarks",
    )
    k: int | None = option(
        None,
        type=_k_spec,
        action=_SetK,
        metavar="[NAME=]K",
        group=GENERATION,
        help="samples per problem (avg@K), for all benchmarks or NAME=K for one (repeatable); default 32 for AIME24, "
        "AIME25 and AMC, 1 for the others",
    )
    k_per_benchmark: dict[str, int] = field(default_factory=dict, metadata={"option": False})
    """Samples per problem for named benchmarks (over ``k``): ``--k NAME=K``."""
    greedy: bool = option(False, group=GENERATION, help="greedy decoding, one sample per problem")
    ood: list[str] | None = option(
        None,
        metavar="NAME",
        help="the out-of-distribution benchmarks (default: arc_c, gpqa, mmlu_pro); the others are ID",
    )

    def __post_init__(self) -> None:
        if not self.models:
            raise EvalError("no --model given")
        for what, value in [("k", self.k), *((f"k for {n}", v) for n, v in self.k_per_benchmark.items())]:
            if value is not None and value < 1:
                raise EvalError(f"{what} must be >= 1, got {value}")
        super().__post_init__()
        self.sampling()  # validates temperature, top_p, max_new_tokens

    def sampling(self, n: int = 1) -> Sampling:
        temperature = 0.0 if self.greedy else self.temperature
        return Sampling(n, temperature, self.top_p, self.max_new_tokens, self.seed)

    def samples_per_problem(self, benchmark: Benchmark) -> int:
        if self.greedy:
            return 1
        return self.k_per_benchmark.get(benchmark.name, self.k or benchmark.default_k)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _slug(name: str) -> str:
    return _UNSAFE.sub("_", name).strip("_") or "model"


@dataclass(eq=False)
class _Part:
    """One benchmark of one model's run."""

    bench: Benchmark
    k: int
    problems: list[Problem]
    store: SampleStore
    have: dict[tuple[int, int], dict]
    """Cached samples by ``(problem_index, sample)``."""
    missing: dict[int, list[int]]
    """The samples still to generate, per problem index."""


@dataclass(eq=False)
class _Request:
    """One problem's missing samples: one prompt, ``len(wanted)`` samples."""

    part: _Part
    problem: Problem
    prompt: Prompt
    wanted: tuple[int, ...]


def paper_set_warnings(benchmarks: list[Benchmark]) -> list[str]:
    """A warning when the benchmarks hold some but not all of the paper's nine text benchmarks: the ID / OOD
    averages are then over other sets than the paper's."""
    present = {b.title for b in benchmarks}
    missing = [info for info in PAPER_TEXT_BENCHMARKS if info.title not in present]
    if not missing or len(missing) == len(PAPER_TEXT_BENCHMARKS):
        return []
    groups = [g for g in ("ID", "OOD") if any(info.group == g for info in missing)]
    names = ", ".join(f"{info.title} (data_source {info.name})" for info in missing)
    hint = ""
    if any(info.name == "mmlu_pro" for info in missing):
        hint = (
            "; MMLU-Pro comes from LUFFY's valid.mmlu_pro.parquet: python data_prep/openr1_math.py --eval-source "
            "path/to/LUFFY/data --out data/openr1_math/benchmarks"
        )
    return [
        f"the paper's text benchmarks {names} are missing, so the {' and '.join(f'{g} avg' for g in groups)} "
        f"{'are' if len(groups) > 1 else 'is'} not the paper's (averaged over the benchmarks present){hint}"
    ]


def _pin_hub_revision(model: ModelRef) -> ModelRef:
    """A hub model keyed by the commit its name resolves to now (online, or in the local hub cache offline), so that
    an update of the hub repository starts a new cache; a folder is keyed by its files already."""
    if not model.fingerprint.startswith("hub:"):
        return model
    try:
        from huggingface_hub import hf_hub_download

        config = Path(hf_hub_download(model.path, "config.json"))
    except Exception as exc:
        raise EvalError(
            f"model {model.path}: not found on the hub nor in the local hub cache ({type(exc).__name__}: {exc}); "
            "pass a model folder instead"
        ) from exc
    if config.parent.parent.name != "snapshots":  # not the hub cache's layout: no commit to read
        return model
    return replace(model, fingerprint=f"hub:{model.path}@{config.parent.name}")


def _model_files(model: ModelRef) -> str:
    """What the backend loads: a folder as given; a hub model pinned by :func:`_pin_hub_revision` from the local
    snapshot of exactly that commit (downloaded if needed), so that the samples are those of the commit they are
    cached under even if the hub repository changes meanwhile."""
    hub, _, commit = model.fingerprint.partition("@")
    if not (hub.startswith("hub:") and commit):
        return model.path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(model.path, revision=commit)
    except Exception as exc:
        raise EvalError(f"model {model.path}: cannot get commit {commit} ({type(exc).__name__}: {exc})") from exc


class _Evaluation:
    def __init__(self, config: EvalConfig, backend_factory: Callable[..., Backend] | None):
        self.config = config
        self.backend_factory = backend_factory or load_backend
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
        self.warnings = paper_set_warnings(self.benchmarks)
        for warning in self.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        self.models = [resolve_model(spec) for spec in config.models]
        names = [m.name for m in self.models]
        slugs = [_slug(n) for n in names]
        if len(set(slugs)) != len(slugs):
            raise EvalError(f"two models would share a name ({', '.join(names)}): name them with --model NAME=PATH")
        self.models = [_pin_hub_revision(m) for m in self.models]
        self.prompt_settings = dict(
            format_prompt=config.format_prompt_text(),
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
        from ..inference import vllm_available

        if self.config.backend == "auto":
            return "vllm" if vllm_available() else "transformers"
        return self.config.backend

    def load(self, model: ModelRef, backend_name: str) -> tuple[Backend, PromptBuilder]:
        """The model's backend and the prompt builder on its tokenizer and processor."""
        c = self.config
        max_images = max((len(p.images or ()) for b in self.benchmarks for p in b.problems), default=1)
        backend = self.backend_factory(backend_name, _model_files(model), **c.backend_options(max_images))
        return backend, c.prompt_builder(backend.tokenizer, backend.processor)

    def parts(self, model: ModelRef, backend_name: str) -> list[_Part]:
        """Per benchmark: its problems, ``k``, cache, the samples cached and those missing."""
        c = self.config
        parts = []
        for bench in self.benchmarks:
            k = c.samples_per_problem(bench)
            problems = bench.limited(c.limit)
            store = self.store(model, bench, backend_name)
            have = store.load()
            missing = {p.index: [j for j in range(k) if (p.index, j) not in have] for p in problems}
            parts.append(_Part(bench, k, problems, store, have, missing))
        return parts

    def requests(self, backend: Backend, builder: PromptBuilder, parts: list[_Part]) -> list[_Request]:
        """The prompts of every problem with missing samples, built and checked against the model's context before
        anything is generated."""
        context = getattr(backend, "context", None)
        sampling = self.config.sampling()
        requests = []
        for part in parts:
            for p in part.problems:
                if not part.missing[p.index]:
                    continue
                prompt = builder.build(p.problem, p.images, multimodal=part.bench.multimodal)
                try:
                    token_budget(prompt, sampling, context)
                except InferenceError as exc:
                    raise EvalError(
                        f"{part.bench.file} row {p.row} (benchmark {part.bench.name}, problem id {p.id}): {exc}; "
                        "shorten the format prompt (--format-prompt) or leave the problem out"
                    ) from None
                requests.append(_Request(part, p, prompt, tuple(part.missing[p.index])))
        return requests

    def calls(self, requests: list[_Request], backend_name: str) -> list[list[_Request]]:
        """The generation calls, in order (see the module docstring)."""
        if backend_name == "vllm":
            calls: list[list[_Request]] = [[]]
            size = 0
            for r in requests:
                if calls[-1] and size + len(r.wanted) > _VLLM_CALL_SEQUENCES:
                    calls.append([])
                    size = 0
                calls[-1].append(r)
                size += len(r.wanted)
            return [call for call in calls if call]
        calls = []
        for part in dict.fromkeys(r.part for r in requests):  # benchmark order
            size = max(1, self.config.batch_size // part.k)
            chunks: dict[int, list[_Request]] = {}
            for r in requests:
                if r.part is part:
                    chunks.setdefault(r.problem.index // size, []).append(r)
            calls += chunks.values()
        return calls

    def generate(self, backend: Backend, model: ModelRef, call: list[_Request]) -> list[dict]:
        """Generate and grade the missing samples of the requests of one call: graded records."""
        per_prompt_n = getattr(backend, "per_prompt_n", False)
        if per_prompt_n:
            groups = [call]  # one backend call, each prompt with its own number of samples
        else:  # problems missing the same samples go together (all of them, unless k grew since the last run)
            groups = [[r for r in call if r.wanted == wanted] for wanted in sorted({r.wanted for r in call})]
        records = []
        for group in groups:
            seeds = [mix_seed(int(r.part.bench.content_hash[:12], 16), r.problem.index, r.wanted[0]) for r in group]
            prompts = [r.prompt for r in group]
            if per_prompt_n:
                n = [len(r.wanted) for r in group]
                texts = backend.generate(prompts, self.config.sampling(), seeds=seeds, n=n)
            else:
                texts = backend.generate(prompts, self.config.sampling(len(group[0].wanted)), seeds=seeds)
            for r, responses in zip(group, texts, strict=True):
                for j, response in zip(r.wanted, responses, strict=True):
                    verdict = judge(response, r.problem.answer, think_opened=r.prompt.think_opened)
                    records.append(self.record(model, r.part.bench, r.problem, j, r.prompt.text, response, verdict))
        return records

    def run_model(self, model: ModelRef, backend_name: str) -> list[dict]:
        """Every sample of ``model`` (read from the cache, or generated, graded and cached), in benchmark order."""
        parts = self.parts(model, backend_name)
        todo = sum(len(missing) for part in parts for missing in part.missing.values())
        if todo:
            backend, builder = self.load(model, backend_name)
            bar = None
            try:
                requests = self.requests(backend, builder, parts)
                by_name = {part.bench.name: part for part in parts}
                bar = progress_bar(total=todo, desc=model.name, unit="samples", enable=self.config.show_progress)
                if hasattr(backend, "on_batch"):
                    backend.on_batch = bar.update
                for call in self.calls(requests, backend_name):
                    records = self.generate(backend, model, call)
                    for name in dict.fromkeys(r["benchmark"] for r in records):
                        part = by_name[name]
                        mine = [r for r in records if r["benchmark"] == name]
                        part.store.append(mine)
                        part.have.update(((r["problem_index"], r["sample"]), r) for r in mine)
                    if not hasattr(backend, "on_batch"):
                        bar.update(len(records))
            finally:
                if bar is not None:
                    bar.close()
                if hasattr(backend, "close"):
                    backend.close()  # free the model (GPU memory) before the next one
        return [self.regraded(part.have[(p.index, j)]) for part in parts for p in part.problems for j in range(part.k)]

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
    :func:`echovl.inference.load_backend`); tests pass fakes.
    """
    run = _Evaluation(config, backend_factory)
    backend_name = run.backend_name()
    samples = {model.name: run.run_model(model, backend_name) for model in run.models}
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
    results["warnings"] = run.warnings
    table = markdown_table(results)
    # every output at once, after all generation: a failed or killed run leaves none of its own (results.json last)
    files: dict[Path, str] = {
        config.out / _slug(name) / "samples.jsonl": "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in rows)
        for name, rows in samples.items()
    }
    files[config.out / "results.csv"] = csv_text(results)
    files[config.out / "table.md"] = table
    files[config.out / "results.json"] = json.dumps(results, indent=2) + "\n"
    write_files(files)
    print(table, end="", file=sys.stdout)
    return results
