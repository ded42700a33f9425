"""What the entropy analyses share: problems from a parquet file, the model's rollouts (generated and graded, or read
back), the teacher-forced entropy of a response split into steps, the command-line options, and output files.

- Problems: a parquet file with ``problem`` and ``answer`` (and ``images``, ``solution`` where needed), read by the
  evaluation's benchmark loader (:func:`echovl.eval.load_benchmarks`: same checks, repeated rows merged), in file
  order; ``--limit N`` keeps the first N.
- Prompts: :class:`echovl.inference.PromptBuilder`, exactly as in training (format prompt, chat template, image
  sizes).
- Rollouts: ``--samples`` per problem from :func:`echovl.inference.load_backend` (vLLM or transformers), graded by
  :func:`echovl.reward.judge`, the training reward's verdict. ``rollouts.jsonl`` keeps them; ``--rollouts FILE``
  reads such a file back instead of generating (matched to the problems by file row and problem text, re-graded).
- Entropy: :class:`echovl.inference.EntropyScorer` on the transformers backend's model, or on one loaded for it when
  vLLM generates (vLLM gives no full-vocabulary logits): token and step entropy, teacher-forced, vision tokens
  masked, the output layer applied ``chunk_size`` positions at a time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..cli import command_parser, option, progress_bar, run_command
from ..eval.benchmarks import EvalError, load_benchmarks
from ..eval.checkpoints import resolve_model
from ..eval.settings import GENERATION, HARDWARE, ModelRunConfig, TrainingConfigFile
from ..inference import (
    Backend,
    EntropyScorer,
    InferenceError,
    Prompt,
    PromptBuilder,
    Sampling,
    load_backend,
    load_model,
    load_processing,
    mix_seed,
)
from ..reward.math import judge

__all__ = [
    "AnalysisConfig",
    "AnalysisError",
    "AnalysisProblem",
    "Rollout",
    "analysis_main",
    "load_problems",
    "obtain_rollouts",
    "rollouts_jsonl",
    "start_analysis",
]


class AnalysisError(EvalError):
    """Bad input to an analysis (a file, a row, an option, or no verified rollout): the message says which and why."""


# ------------------------------------------------------------------------------------------------------- settings


@dataclass(kw_only=True)
class AnalysisConfig(ModelRunConfig):
    """Settings both analyses share (with those of :class:`echovl.eval.settings.ModelRunConfig`; each command adds
    its own). The entropy is at the sampling temperature."""

    error: ClassVar[type[EvalError]] = AnalysisError

    model: str = option(help="a model folder, an EasyR1 checkpoint (merged) or a hub name")
    data: str = option(
        help="parquet file with problem and answer columns (images for a vision-language task), e.g. "
        "data/openr1_math/train.parquet or data/geometry3k/test.parquet"
    )
    samples: int = option(8, group=GENERATION, help="rollouts per problem (the paper's group size)")
    rollouts: str | None = option(
        None,
        metavar="FILE",
        help="read the rollouts from a rollouts.jsonl of an earlier run (same --data and prompt) instead of "
        "generating them",
    )
    delimiters: list[str] | None = option(
        None,
        config_key="echo.delimiters",
        help="step delimiters as echo.delimiters in training, '\\n' for a newline (default: the --config's "
        "echo.delimiters, else a newline)",
    )
    chunk_size: int = field(default=128, metadata={"option": False})
    """Positions per chunk of the output layer and the entropy (``echo.entropy_chunk_size``)."""
    gpu_memory_utilization: float = option(
        0.6,
        group=HARDWARE,
        help="vLLM's share of GPU memory; the rest holds the transformers model for the entropy",
    )

    def __post_init__(self) -> None:
        from ..config import EchoConfig

        for name in ("samples", "chunk_size"):
            if getattr(self, name) < 1:
                raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise AnalysisError(
                f"--temperature must be > 0 (entropy is of softmax(logits / T)), got {self.temperature}"
            )
        super().__post_init__()
        if self.rollouts is not None and not Path(self.rollouts).is_file():
            raise AnalysisError(f"--rollouts {self.rollouts}: no such file")
        try:
            self.delimiters = EchoConfig(delimiters=list(self.delimiters or ["\n"])).delimiters
        except ValueError as exc:
            raise AnalysisError(str(exc).replace("echo.delimiters", "--delimiters")) from None
        self.sampling()  # validates top_p and max_new_tokens

    def sampling(self, n: int | None = None, max_new_tokens: int | None = None) -> Sampling:
        return Sampling(
            self.samples if n is None else n,
            self.temperature,
            self.top_p,
            self.max_new_tokens if max_new_tokens is None else max_new_tokens,
            self.seed,
        )


def analysis_main(
    name: str, config: type[AnalysisConfig], run: Callable[[AnalysisConfig], Any], argv, *, description: str
) -> int:
    """``python -m echovl.analysis.<name>``: ``run`` the analysis of the command line's ``config``; a bad input is one
    line on stderr and exit status 1."""
    parser = command_parser(
        config, TrainingConfigFile, prog=f"python -m echovl.analysis.{name}", description=description
    )

    def analyse(settings: AnalysisConfig, _: TrainingConfigFile) -> None:
        run(settings)

    return run_command(
        parser,
        analyse,
        argv,
        errors=(InferenceError,),  # AnalysisError and EvalError are ones
        prefix=f"{name}: error: ",
        interrupted=f"{name}: interrupted; nothing was written",
    )


# ------------------------------------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class AnalysisProblem:
    index: int
    """Position among the problems analysed (file order, repeats merged)."""
    id: str
    """The file's ``id`` value, else the row number of its first row."""
    row: int
    """Row of the file (its first row)."""
    problem: str
    answer: str
    images: tuple[bytes, ...] | None
    multimodal: bool
    solution: str | None = None
    """The expert trace (``solution`` column), when asked for."""


def load_problems(
    path: str | Path,
    *,
    prompt_key: str = "problem",
    answer_key: str = "answer",
    image_key: str = "images",
    solution_key: str | None = None,
    limit: int | None = None,
    notify: Callable[[str], None] | None = None,
) -> list[AnalysisProblem]:
    """The problems of a parquet file in file order (the first ``limit``); :class:`AnalysisError` when the file is
    missing, empty, lacks a column, or a selected problem has an empty answer or solution."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"data file {path}: no such file")
    if solution_key is not None:
        try:
            columns = pq.ParquetFile(path).schema_arrow.names
        except Exception as exc:
            raise AnalysisError(f"cannot read data file {path} as parquet: {exc}") from exc
        if solution_key not in columns:
            raise AnalysisError(
                f"data file {path} has no column {solution_key!r} with the expert traces (columns: "
                f"{', '.join(columns)}); data_prep/openr1_math.py writes it into train.parquet"
            )
    kwargs = {} if notify is None else {"notify": notify}
    try:
        benchmarks = load_benchmarks(
            [str(path)], prompt_key=prompt_key, answer_key=answer_key, image_key=image_key, **kwargs
        )
    except EvalError as exc:
        raise AnalysisError(str(exc).replace("benchmark file", "data file")) from None
    found = sorted(((p, b.multimodal) for b in benchmarks for p in b.problems), key=lambda item: item[0].row)
    found = found[:limit] if limit is not None else found
    solutions: list[Any] = []
    if solution_key is not None:
        column = pq.read_table(path, columns=[solution_key]).column(solution_key)
        solutions = [column[p.row].as_py() for p, _ in found]
    problems = []
    for index, (p, multimodal) in enumerate(found):
        solution = None
        if solution_key is not None:
            solution = solutions[index] if isinstance(solutions[index], str) else None
            if not solution or not solution.strip():
                raise AnalysisError(f"{path} row {p.row}: empty {solution_key!r} (no expert trace)")
        problems.append(AnalysisProblem(index, p.id, p.row, p.problem, p.answer, p.images, multimodal, solution))
    return problems


# ------------------------------------------------------------------------------------------------------- rollouts


@dataclass
class Rollout:
    problem: AnalysisProblem
    sample: int
    response: str
    answer: str | None
    """The grader's extracted answer (None: none found)."""
    correct: bool

    def record(self, prompt: Prompt) -> dict:
        return {
            "problem_index": self.problem.index,
            "problem_id": self.problem.id,
            "row": self.problem.row,
            "sample": self.sample,
            "problem": self.problem.problem,
            "reference": self.problem.answer,
            "prompt": prompt.text,
            "response": self.response,
            "answer": self.answer,
            "correct": self.correct,
        }


def generate(
    backend: Backend, prompts: Sequence[Prompt], sampling: Sampling, seeds: Sequence[int], bar
) -> list[list[str]]:
    """``backend.generate`` with the progress bar fed per batch (transformers) or at the end (vLLM: its own bar)."""
    if not prompts:
        return []
    if hasattr(backend, "on_batch"):
        backend.on_batch = bar.update
    texts = backend.generate(list(prompts), sampling, seeds=list(seeds))
    if not hasattr(backend, "on_batch"):
        bar.update(len(prompts) * sampling.n)
    return texts


def _read_rollouts(path: Path, problems: Sequence[AnalysisProblem], prompts: Sequence[Prompt]) -> list[Rollout]:
    by_row = {p.row: p for p in problems}
    rollouts: dict[tuple[int, int], Rollout] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                record = json.loads(line)
                row, sample, response = int(record["row"]), int(record["sample"]), record["response"]
                text, prompt_text = record["problem"], record["prompt"]
            except (ValueError, KeyError, TypeError) as exc:
                raise AnalysisError(
                    f"{where}: not a rollout record (needs row, sample, problem, prompt, response): {exc}"
                ) from None
            problem = by_row.get(row)
            if problem is None:
                continue  # a problem outside --limit
            if text != problem.problem:
                raise AnalysisError(f"{where}: row {row} holds another problem than the data file's: another --data?")
            if prompt_text != prompts[problem.index].text:
                raise AnalysisError(
                    f"{where}: the rollout was sampled under another prompt than this run builds (format prompt or "
                    "chat template): pass the --config / --format-prompt of the run that wrote it"
                )
            if not isinstance(response, str):
                raise AnalysisError(f"{where}: 'response' must be a string")
            verdict = judge(response, problem.answer, think_opened=prompts[problem.index].think_opened)
            rollouts[(problem.index, sample)] = Rollout(
                problem, sample, response, verdict.answer, bool(verdict.correct)
            )
    if not rollouts:
        raise AnalysisError(f"{path} holds no rollout of the selected problems of the data file (another --data?)")
    return [rollouts[key] for key in sorted(rollouts)]


def obtain_rollouts(
    config: AnalysisConfig,
    problems: Sequence[AnalysisProblem],
    prompts: Sequence[Prompt],
    backend: Callable[[], Backend],
) -> list[Rollout]:
    """The rollouts of ``problems`` (``config.samples`` each, graded), or those of ``config.rollouts``."""
    if config.rollouts is not None:
        return _read_rollouts(Path(config.rollouts), problems, prompts)
    sampling = config.sampling()
    bar = progress_bar(total=len(problems) * sampling.n, desc="rollouts", unit="samples", enable=config.show_progress)
    seeds = [mix_seed("rollouts", p.row) for p in problems]
    texts = generate(backend(), prompts, sampling, seeds, bar)
    bar.close()
    rollouts = []
    for problem, prompt, responses in zip(problems, prompts, texts):
        for sample, response in enumerate(responses):
            verdict = judge(response, problem.answer, think_opened=prompt.think_opened)
            rollouts.append(Rollout(problem, sample, response, verdict.answer, bool(verdict.correct)))
    return rollouts


def start_analysis(
    config: AnalysisConfig,
    backend_factory: Callable[..., Backend] | None,
    *,
    solution_key: str | None = None,
    generates: bool = False,
) -> tuple[Session, list[AnalysisProblem], list[Prompt], list[Rollout]]:
    """The first half of both analyses: the problems, the session, the prompts and the graded rollouts.

    The backend is built first (vLLM sizes its memory before the transformers model for the entropy is loaded next
    to it) when rollouts are to be sampled or ``generates`` says the analysis generates later.
    """
    pyplot()  # fail now, not after the generation, when matplotlib is missing
    problems = load_problems(
        config.data,
        prompt_key=config.prompt_key,
        answer_key=config.answer_key,
        image_key=config.image_key,
        solution_key=solution_key,
        limit=config.limit,
    )
    session = Session(config, backend_factory)
    session.max_images = max([len(p.images or ()) for p in problems] + [1])
    if config.rollouts is None or generates:
        session.backend()
    builder = session.builder()
    prompts = [builder.build(p.problem, p.images, multimodal=p.multimodal) for p in problems]
    return session, problems, prompts, obtain_rollouts(config, problems, prompts, session.backend)


def rollouts_jsonl(rollouts: Sequence[Rollout], prompts: Sequence[Prompt]) -> str:
    """``rollouts.jsonl``: one rollout record per line (what ``--rollouts`` reads back)."""
    return "".join(json.dumps(r.record(prompts[r.problem.index]), ensure_ascii=False) + "\n" for r in rollouts)


def no_verified_rollout(config: AnalysisConfig, rollouts: Sequence[Rollout]) -> AnalysisError:
    return AnalysisError(
        f"none of the {len(rollouts)} rollouts of {len({r.problem.index for r in rollouts})} problems is verified "
        "correct, so there is nothing to analyse. Try more --samples or problems (--limit), a larger "
        "--max-new-tokens (a response cut short has no answer), the prompt the model was trained with (--config, "
        "--format-prompt), or a stronger model; rollouts.jsonl of a run shows what the model wrote"
    )


class Session:
    """A run's model, prompts and backend, made when first needed (the backend first: vLLM sizes its memory before the
    transformers model for the entropy is loaded next to it)."""

    def __init__(self, config: AnalysisConfig, backend_factory: Callable[..., Backend] | None):
        self.config = config
        self.factory = backend_factory or load_backend
        self.model_ref = resolve_model(config.model)
        self._backend: Backend | None = None
        self._scorer: EntropyScorer | None = None
        self.tokenizer = self.processor = None
        self.max_images = 1
        """Most images of a problem (vLLM's ``limit_mm_per_prompt``)."""

    def backend(self) -> Backend:
        if self._backend is None:
            options = self.config.backend_options(self.max_images)
            self._backend = self.factory(self.config.backend, self.model_ref.path, **options)
        return self._backend

    def processing(self):
        """``(tokenizer, processor)``: the backend's when it is loaded, else the model folder's."""
        if self._backend is not None:
            return self._backend.tokenizer, self._backend.processor
        if self.tokenizer is None:
            self.tokenizer, self.processor = load_processing(self.model_ref.path)
        return self.tokenizer, self.processor

    def builder(self) -> PromptBuilder:
        return self.config.prompt_builder(*self.processing())

    def scorer(self) -> EntropyScorer:
        """The entropy on the transformers backend's model, else on one loaded for it (``--device``)."""
        if self._scorer is None:
            loaded = getattr(self._backend, "loaded", None) or load_model(
                self.model_ref.path, device=self.config.device
            )
            self._scorer = EntropyScorer(
                loaded,
                temperature=self.config.temperature,
                delimiters=self.config.delimiters,
                chunk_size=self.config.chunk_size,
            )
        return self._scorer


# ------------------------------------------------------------------------------------------------------- outputs


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise AnalysisError("the figures need matplotlib: pip install -e '.[analysis]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
