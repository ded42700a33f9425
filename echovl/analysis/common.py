"""What the entropy analyses share: problems from a parquet file, the model's rollouts (generated and graded, or read
back), the teacher-forced entropy of a response split into steps, the command-line options, and output files.

- Problems: a parquet file with ``problem`` and ``answer`` (and ``images``, ``solution`` where needed), read by the
  evaluation's benchmark loader (:func:`echovl.eval.load_benchmarks`: same checks, repeated rows merged), in file
  order; ``--limit N`` keeps the first N.
- Prompts: :class:`echovl.eval.PromptBuilder`, exactly as in training (format prompt, chat template, image sizes).
- Rollouts: ``--samples`` per problem from :func:`echovl.eval.load_backend` (vLLM or transformers), graded by
  :func:`echovl.reward.judge`, the training reward's verdict. ``rollouts.jsonl`` keeps them; ``--rollouts FILE``
  reads such a file back instead of generating (matched to the problems by file row and problem text, re-graded).
- Entropy (:class:`EntropyScorer`): one teacher-forced transformers forward over prompt + response (also when vLLM
  generates: vLLM gives no full-vocabulary logits), token entropy of ``softmax(logits / temperature)`` with the
  image placeholders masked out as the backends never sample them, the output layer applied ``chunk_size``
  positions at a time so that no [tokens, vocab] tensor is ever made. The response is tokenised on its own
  (``tokenizer.encode(response)``) after the prompt's ids, as EasyR1 holds prompt and response; steps come from
  :func:`echovl.steps.step_index` with the training delimiters, step entropy from :func:`echovl.clip.step_entropies`
  over text tokens only (:func:`echovl.steps.special_table`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..cli import command_parser, option, progress_bar, run_command
from ..eval.backends import Backend, Sampling, image_token_ids, load_backend, mix_seed
from ..eval.benchmarks import EvalError, load_benchmarks
from ..eval.checkpoints import resolve_model
from ..eval.prompts import Prompt, PromptBuilder
from ..eval.settings import GENERATION, HARDWARE, ModelRunConfig, TrainingConfigFile
from ..reward.math import judge

__all__ = [
    "AnalysisConfig",
    "AnalysisError",
    "AnalysisProblem",
    "EntropyScorer",
    "Rollout",
    "ScoredResponse",
    "Step",
    "analysis_main",
    "csv_text",
    "load_problems",
    "obtain_rollouts",
    "png_bytes",
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

    def prompt_builder(self, tokenizer, processor) -> PromptBuilder:
        text = Path(self.format_prompt).read_text(encoding="utf-8") if self.format_prompt else None
        return PromptBuilder(
            tokenizer, processor, format_prompt=text, min_pixels=self.min_pixels, max_pixels=self.max_pixels
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
        errors=(EvalError,),
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


# ------------------------------------------------------------------------------------------------------- entropy


@dataclass
class Step:
    """One reasoning step of a response."""

    index: int
    start: int
    """First token (of the response)."""
    end: int
    """One past the last token."""
    text: str
    """Its tokens decoded (special tokens skipped)."""
    tokens: int
    """Text tokens (what the step entropy averages over)."""
    entropy: float
    """Mean token entropy over its text tokens (NaN without any)."""


@dataclass
class ScoredResponse:
    ids: list[int]
    """The response's token ids (cut to the model's context when ``truncated``)."""
    entropy: Any
    """[len(ids)] fp32 tensor: the entropy of the distribution each token was drawn from."""
    text_mask: Any
    """[len(ids)] bool tensor: text tokens (not special or vision tokens)."""
    steps: list[Step]
    truncated: int = 0
    """Tokens of the response cut off because prompt + response exceed the model's context."""

    def text_entropies(self):
        """The entropies of the text tokens (a numpy array)."""
        return self.entropy[self.text_mask].numpy()


def load_scoring_model(model_path: str, device: str | None):
    """The transformers model of ``model_path`` in eval mode (bfloat16 on CUDA, float32 on CPU)."""
    import torch
    from transformers import AutoConfig

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        config = AutoConfig.from_pretrained(model_path)
        if hasattr(config, "vision_config"):
            from transformers import AutoModelForImageTextToText as auto_class
        else:
            from transformers import AutoModelForCausalLM as auto_class
        return auto_class.from_pretrained(model_path, dtype=dtype).to(device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise AnalysisError(f"cannot load the model from {model_path}: {exc}") from exc


class EntropyScorer:
    """Token and step entropy of responses under ``model``, teacher-forced after their prompt (module docstring).

    The output layer is applied to ``chunk_size`` positions at a time (for the Hugging Face models whose forward
    is ``lm_head(self.model(...)[0])``: Qwen2, Qwen2.5-VL, Llama, ...; other models fall back to their own
    forward, which makes the logits of the whole response at once).
    """

    def __init__(
        self,
        model,
        builder: PromptBuilder,
        *,
        temperature: float,
        delimiters: Sequence[str],
        chunk_size: int = 128,
        context: int | None = None,
    ):
        from ..steps import delimiter_table, special_table

        self.model = model
        self.builder = builder
        self.tokenizer = builder.tokenizer
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.context = context
        self.is_delimiter = delimiter_table(self.tokenizer, tuple(delimiters))
        self.non_text = special_table(self.tokenizer)
        self.suppress = image_token_ids(self.tokenizer, builder.processor)
        body = getattr(model, "model", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        softcap = getattr(getattr(config, "text_config", config), "final_logit_softcapping", None)
        self._split = body is not None and head is not None and not softcap
        self._body, self._head = body, head

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _entropy(self, hidden_or_logits, project: bool):
        import torch

        from ..entropy import token_entropy

        out = []
        for start in range(0, hidden_or_logits.shape[0], self.chunk_size):
            chunk = hidden_or_logits[start : start + self.chunk_size]
            logits = (self._head(chunk) if project else chunk).float() / self.temperature
            if self.suppress:
                logits[:, [i for i in self.suppress if i < logits.shape[-1]]] = -torch.inf  # never sampled
            out.append(token_entropy(logits, self.chunk_size).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def token_entropy(self, prompt: Prompt, ids: Sequence[int]):
        """[len(ids)] fp32 entropy of each response token's distribution, given the prompt and the tokens before."""
        import torch

        n = len(ids)
        if n == 0:
            return torch.zeros(0)
        inputs = self.builder.model_inputs([self.builder.continuation(prompt, ids)])
        inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.inference_mode():
            if self._split:
                hidden = self._body(**inputs, use_cache=False)[0][0]
                # the output at position p predicts token p + 1: the response's tokens from the last prompt position
                return self._entropy(hidden[-(n + 1) : -1], project=True)
            logits = self.model(**inputs, use_cache=False, logits_to_keep=n + 1).logits[0]
            return self._entropy(logits[:-1], project=False)

    def score(self, prompt: Prompt, response: str) -> ScoredResponse:
        """The response's tokens, their entropy, and its steps with their entropy."""
        import torch

        from ..clip import step_entropies
        from ..steps import step_index, text_mask

        ids = self.tokenizer.encode(response, add_special_tokens=False)
        truncated = 0
        if self.context is not None and prompt.input_length + len(ids) > self.context:
            keep = max(0, self.context - prompt.input_length)
            truncated, ids = len(ids) - keep, ids[:keep]
        entropy = self.token_entropy(prompt, ids)
        tensor = torch.tensor([ids], dtype=torch.long)
        mask = torch.ones_like(tensor)
        steps = step_index(tensor, mask, self.is_delimiter)
        text = text_mask(tensor, mask, self.non_text)
        means, counts = step_entropies(entropy.unsqueeze(0), steps, text)
        spans: dict[int, list[int]] = {}
        for position, step in enumerate(steps[0].tolist()):
            spans.setdefault(step, [position, position])[1] = position + 1
        records = []
        for index in sorted(spans):
            start, end = spans[index]
            piece = self.tokenizer.decode(ids[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            count = int(counts[0, index])
            records.append(Step(index, start, end, piece, count, float(means[0, index]) if count else math.nan))
        return ScoredResponse(list(ids), entropy, text[0], records, truncated)


def scoring_model(config: AnalysisConfig, model_path: str, backend: Backend | None):
    """The transformers model for the entropy: the transformers backend's own, else a fresh one."""
    model = getattr(backend, "model", None) if backend is not None else None
    if model is not None and hasattr(model, "get_output_embeddings"):
        return model
    return load_scoring_model(model_path, config.device)


def model_context(model) -> int | None:
    from ..eval.backends import context_length

    return context_length(model.config)


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
            c = self.config
            self._backend = self.factory(
                c.backend,
                self.model_ref.path,
                batch_size=c.batch_size,
                device=c.device,
                tensor_parallel_size=c.tensor_parallel_size,
                max_images=self.max_images,
                show_progress=sys.stderr.isatty() if c.show_progress is None else c.show_progress,
                engine_kwargs={"gpu_memory_utilization": c.gpu_memory_utilization, "seed": c.seed},
            )
        return self._backend

    def processing(self):
        """``(tokenizer, processor)``: the backend's when it is loaded, else the model folder's."""
        if self._backend is not None:
            return self._backend.tokenizer, self._backend.processor
        if self.tokenizer is None:
            from ..eval.prompts import load_processing

            self.tokenizer, self.processor = load_processing(self.model_ref.path)
        return self.tokenizer, self.processor

    def builder(self) -> PromptBuilder:
        return self.config.prompt_builder(*self.processing())

    def scorer(self) -> EntropyScorer:
        if self._scorer is None:
            model = scoring_model(self.config, self.model_ref.path, self._backend)
            self._scorer = EntropyScorer(
                model,
                self.builder(),
                temperature=self.config.temperature,
                delimiters=self.config.delimiters,
                chunk_size=self.config.chunk_size,
                context=model_context(model),
            )
        return self._scorer


# ------------------------------------------------------------------------------------------------------- outputs


def csv_text(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """CSV with a header; floats written with 8 significant digits, None and NaN as empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in columns})
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return f"{value:.8g}"
    return value


def png_bytes(figure) -> bytes:
    """A matplotlib figure as PNG bytes (closed afterwards)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise AnalysisError("the figures need matplotlib: pip install -e '.[analysis]'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
