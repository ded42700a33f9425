"""CPU mini-experiment: advantage degeneration, and the gradient EchoRL keeps, on a tiny Qwen2.5-VL.

``python -m echovl.experiments.tiny_cpu --out runs/tiny_cpu_echo`` (or ``bash configs/tiny_cpu_echo.sh``):

1. builds a tiny random Qwen2.5-VL offline (:func:`echovl.testing.build_tiny_qwen2_5_vl`'s tokenizer, a slightly
   wider model, one image token per picture);
2. generates the task of :mod:`echovl.experiments.digits` (add the two digits of a picture);
3. warms the model up with supervised steps on reference solutions until it solves part of the task (sampled
   accuracy on held-out problems >= ``--warmup-target``, checked every ``--warmup-check`` steps);
4. runs GRPO twice from that same start with the same seed, echo off (``baseline``) and on (``echo``), measuring
   on every step the gradient of the RL term and of the echo term separately
   (:class:`~echovl.experiments.probe.GradientProbeTrainer`), plus one more echo run per ``--variant``
   (other ``echo:`` settings, e.g. ``soft:selection=soft``);
5. evaluates them on held-out problems and writes ``metrics.csv``, ``plot.png``, ``summary.json`` and trace files
   (``traces/``, for ``python demo/app.py --traces <out>/traces``; a variant's in ``traces_<name>/``).

``--seeds 0-4`` does all of it once per seed (``<out>/seed_<s>/``) and reports, for echo and each variant, the
paired difference to the baseline in held-out accuracy over the seeds with a 95% confidence interval
(``seeds.json``, ``seeds.csv``).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cli import OptionError, command_parser, option, progress_bar, run_command
from ..outputs import Outputs, csv_text, figure_png, write_files

__all__ = [
    "ExperimentOptions",
    "ExperimentSettings",
    "main",
    "parse_seeds",
    "parse_variant",
    "run_experiment",
    "run_seeds",
]

stage_progress = functools.partial(progress_bar, enable=True, leave=True)
"""The experiment's progress bars, one per stage: always shown, and kept when done."""

RUNS = ("baseline", "echo")
"""The two runs every experiment makes; ``ExperimentSettings.variants`` adds more echo runs."""

# CSV column -> the trainer's logged metric
_LOGGED = {
    "accuracy": "rewards/accuracy/mean",
    "all_correct_groups": "echo/degenerate_groups",
    "all_wrong_groups": "echo/all_wrong_groups",
    "rl_grad_norm": "probe/rl_grad_norm",
    "echo_grad_norm": "probe/echo_grad_norm",
    "rl_token_grad_all_correct": "probe/rl_token_grad_all_correct",
    "echo_token_grad_all_correct": "probe/echo_token_grad_all_correct",
    "echo_loss": "echo/loss",
    "clips": "echo/clips",
    "clip_length": "echo/clip_length",
    "clip_step_entropy": "echo/clip_step_entropy",
    "coef": "echo/coef",
    "clips_per_group": "echo/clips_per_group",
    "clip_weight_max": "echo/clip_weight_max",
    "entropy": "entropy",
    "loss": "loss",
    "grad_norm": "grad_norm",
    "completion_length": "completions/mean_length",
    "step_time_s": "step_time",
    "echo_entropy_forward_s": "timing_s/echo_entropy_forward",
    "echo_mining_s": "timing_s/echo_mining",
}
COLUMNS = ("run", "step", *_LOGGED)


@dataclass
class ExperimentSettings:
    """Everything that defines a run (written to ``summary.json``)."""

    seed: int = 0
    steps: int = 40
    """GRPO steps per run."""
    prompts_per_step: int = 16
    rollouts: int = 8
    """Rollouts per prompt (the group size G)."""
    temperature: float = 0.6
    """Sampling temperature of the rollouts (the paper's), also used for the warm-up's stopping check."""
    optimizer: str = "adamw_torch"
    """GRPO optimizer (a ``transformers`` ``optim`` name)."""
    learning_rate: float = 2e-4
    """GRPO learning rate (constant). Adam at 5e-4 and above wrecks this tiny model within a few steps."""
    coef: float = 0.001
    """lambda of the echo run (the paper's value)."""
    max_completion_length: int = 32
    train_problems: int = 2000
    eval_problems: int = 100
    warmup_max_steps: int = 800
    warmup_target: float = 0.45
    """Stop the warm-up once the sampled accuracy on held-out problems reaches this."""
    warmup_check: int = 25
    warmup_batch: int = 32
    warmup_lr: float = 2e-3
    probe_problems: int = 64
    """Held-out problems for the warm-up's stopping check."""
    hidden_size: int = 128
    attention_heads: int = 8
    vision_hidden_size: int = 64
    trace_freq: int = 5
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    """More echo runs from the same start: name -> ``echo:`` settings on top of the echo run's (e.g.
    ``{"soft": {"selection": "soft", "soft_temperature": 0.5}}``)."""
    threads: int = 2
    """torch CPU threads. Fixed rather than torch's default (one per core), because the thread count can change how
    kernels split their sums, hence the last bits of a result, and from there every sampled token (docs/cpu_experiment.md: on the
    development machine 1 and 2 threads gave the same run, while 8 threads changed the warm start within 50 steps)."""

    @property
    def runs(self) -> tuple[str, ...]:
        """``baseline``, ``echo``, then the variants."""
        return (*RUNS, *self.variants)

    @classmethod
    def quick(cls, seed: int = 0) -> ExperimentSettings:
        """A pipeline check in well under a minute (the test suite runs it): two training problems, a warm-up that
        half-memorises them, two GRPO steps of 2 prompts x 4 rollouts."""
        return cls(
            seed=seed,
            steps=2,
            prompts_per_step=2,
            rollouts=4,
            train_problems=2,
            eval_problems=4,
            warmup_max_steps=60,
            warmup_target=1.1,  # never reached: always the 60 steps
            warmup_check=60,
            warmup_batch=8,
            warmup_lr=5e-3,
            probe_problems=2,
            hidden_size=64,
            attention_heads=4,
            vision_hidden_size=32,
            trace_freq=1,
        )


# ------------------------------------------------------------------------------------------------ model
def build_model(folder: Path, settings: ExperimentSettings) -> Path:
    """The tiny offline Qwen2.5-VL, widened to ``hidden_size`` with ``attention_heads`` heads (it learns to read the
    digits several times faster than the 64-wide, 4-head test model); pictures of 28 x 28 pixels are one image token."""
    from ..testing import build_tiny_qwen2_5_vl
    from .digits import IMAGE_SIZE

    half = settings.hidden_size // settings.attention_heads // 2
    pixels = IMAGE_SIZE * IMAGE_SIZE
    return build_tiny_qwen2_5_vl(
        folder,
        seed=settings.seed,
        hidden_size=settings.hidden_size,
        num_heads=settings.attention_heads,
        vision_hidden_size=settings.vision_hidden_size,
        mrope_section=[half - 2 * (half // 3), half // 3, half // 3],  # the split the measured runs used
        min_pixels=pixels,
        max_pixels=4 * pixels,
    )


def _prompt_messages() -> list[dict]:
    from .digits import QUESTION

    return [{"role": "user", "content": QUESTION}]


def _prompts(processor, problems):
    """The prompts as TRL renders them (the image block first, then the question: TRL's multimodal messages), built by
    :class:`echovl.inference.PromptBuilder` with the pictures as they are (28 x 28, one image token). Problems differ
    only in their picture: the prompt is built once (a build costs about a millisecond, and a warm-up step takes 32
    prompts), then given each problem's picture."""
    from ..inference import PromptBuilder
    from .digits import QUESTION, digit_image

    builder = PromptBuilder(processor.tokenizer, processor, format_prompt=None, min_pixels=None, max_pixels=None)
    images = [digit_image(p) for p in problems]
    prompt = builder.build(f"<image>{QUESTION}", images[:1])
    return [replace(prompt, images=(image,)) for image in images]


def generate_answers(model, processor, problems, *, temperature: float, max_new_tokens: int, seed: int):
    """Responses of ``model`` (greedy when ``temperature`` is 0), all in one batch seeded with ``seed``, and their
    accuracy."""
    from ..inference import LoadedModel, Sampling, TransformersBackend
    from ..reward.math import grade

    backend = TransformersBackend(LoadedModel(model, processor.tokenizer, processor))
    sampling = Sampling(temperature=temperature, max_new_tokens=max_new_tokens)
    was_training = model.training
    model.eval()
    texts = backend.decode(*backend.sample(_prompts(processor, problems), sampling, seed=seed))
    model.train(was_training)
    scores = [grade(text, p.answer)["accuracy"] for text, p in zip(texts, problems)]
    return texts, sum(scores) / max(len(scores), 1)


# ------------------------------------------------------------------------------------------------ warm-up
def warm_up(model, processor, train, probe, settings: ExperimentSettings, progress) -> dict[str, Any]:
    """Supervised steps on reference solutions until the sampled probe accuracy reaches the target."""
    import torch

    from ..inference import PromptBuilder
    from .digits import solution

    tokenizer = processor.tokenizer
    rng = random.Random(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.warmup_lr, weight_decay=0.0)
    model.train()
    accuracy, step, loss = 0.0, 0, math.nan
    bar = progress(total=settings.warmup_max_steps, desc="warm-up (supervised)", unit="step")
    for step in range(1, settings.warmup_max_steps + 1):
        batch = [train[rng.randrange(len(train))] for _ in range(settings.warmup_batch)]
        prompts = PromptBuilder(tokenizer, processor).model_inputs(_prompts(processor, batch))
        answers = [tokenizer(solution(p) + tokenizer.eos_token)["input_ids"] for p in batch]
        width = max(len(a) for a in answers)
        answer_ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
        answer_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(answers):
            answer_ids[row, : len(ids)] = torch.tensor(ids)
            answer_mask[row, : len(ids)] = 1
        input_ids = torch.cat([prompts["input_ids"], answer_ids], dim=1)
        labels = torch.cat(
            [torch.full_like(prompts["input_ids"], -100), answer_ids.masked_fill(answer_mask == 0, -100)], 1
        )
        out = model(
            input_ids=input_ids,
            attention_mask=torch.cat([prompts["attention_mask"], answer_mask], dim=1),
            pixel_values=prompts["pixel_values"],
            image_grid_thw=prompts["image_grid_thw"],
            labels=labels,
        )
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = out.loss.item()
        bar.update(1)
        if step % settings.warmup_check == 0 or step == settings.warmup_max_steps:
            _, accuracy = generate_answers(
                model,
                processor,
                probe,
                temperature=settings.temperature,
                max_new_tokens=settings.max_completion_length,
                seed=settings.seed,
            )
            bar.set_postfix(loss=f"{loss:.3f}", probe_acc=f"{accuracy:.2f}")
            if accuracy >= settings.warmup_target:
                break
    bar.close()
    return {"steps": step, "loss": loss, "probe_accuracy": accuracy}


# ------------------------------------------------------------------------------------------------ GRPO
def _dataset(problems):
    from datasets import Dataset

    from .digits import digit_image

    rows = [{"prompt": _prompt_messages(), "image": digit_image(p), "answer": p.answer} for p in problems]
    return Dataset.from_list(rows)


def _metric_recorder(run: str, rows: list[dict], progress, total: int):
    from transformers import TrainerCallback

    class Recorder(TrainerCallback):
        """One CSV row per logged step, and a progress bar with the headline numbers."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = progress(total=total, desc=f"GRPO {run:<8}", unit="step")

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" not in logs:  # the end-of-training summary
                return
            row = {"run": run, "step": state.global_step}
            for column, key in _LOGGED.items():
                value = logs.get(key)
                row[column] = math.nan if value is None else float(value)
            rows.append(row)
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix(acc=f"{row['accuracy']:.2f}", all_correct=f"{row['all_correct_groups']:.2f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    return Recorder()


def run_grpo(
    run: str,
    start: Path,
    processor,
    dataset,
    settings: ExperimentSettings,
    out: Path,
    progress,
    trace_dir: Path | None,
):
    """GRPO from the checkpoint in ``start``, echo on for every run but ``baseline`` (with a variant's settings), its
    traces written to ``trace_dir``; returns the metric rows and the model."""
    from transformers import AutoModelForImageTextToText, PrinterCallback

    from ..trl import GRPOConfig, accuracy
    from .probe import GradientProbeTrainer

    model = AutoModelForImageTextToText.from_pretrained(start)
    batch = settings.prompts_per_step * settings.rollouts
    args = GRPOConfig(
        output_dir=str(out / "work" / f"grpo_{run}"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=settings.seed,
        max_steps=settings.steps,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=1,
        num_generations=settings.rollouts,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        top_k=0,
        top_p=1.0,
        optim=settings.optimizer,
        learning_rate=settings.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        beta=0.0,
        loss_type="dapo",
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )
    echo = {
        "enable": run != "baseline",
        "coef": settings.coef,
        "trace_freq": settings.trace_freq if run != "baseline" else 0,
        "trace_groups": settings.prompts_per_step,
        "trace_dir": str(trace_dir) if trace_dir else None,
        **settings.variants.get(run, {}),
    }
    rows: list[dict] = []
    trainer = GradientProbeTrainer(
        model=model,
        reward_funcs=[accuracy],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        echo_config=echo,
        callbacks=[_metric_recorder(run, rows, progress, settings.steps)],
    )
    trainer.remove_callback(PrinterCallback)
    trainer.train()
    trainer.save_model(str(out / "work" / f"model_{run}"))
    return rows, trainer.model


# ------------------------------------------------------------------------------------------------ outputs
def metrics_csv(rows: Sequence[dict]) -> str:
    """``metrics.csv``: one row per run and step, the columns of :data:`COLUMNS`."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


SMOOTHING = 5
"""Steps of the trailing mean drawn over the noisy per-step curves."""


def plot_metrics(rows: Sequence[dict], summary: dict) -> bytes:
    """``plot.png``: six panels, both runs: accuracy, all-correct groups, gradient norms, gradient on all-correct groups'
    tokens, echo loss, clips."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..demo.charts import trailing_mean

    def series(run: str, column: str):
        picked = [r for r in rows if r["run"] == run]
        return [r["step"] for r in picked], [r[column] for r in picked]

    runs = summary["settings"].get("runs", RUNS)
    others = ("tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    colors = {"baseline": "tab:gray", "echo": "tab:blue"}
    colors.update({run: others[i % len(others)] for i, run in enumerate(runs[len(RUNS) :])})
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    (acc, deg, grad), (token, loss, clips) = axes
    for run in runs:
        label = f"{run}: GRPO" + ("" if run == "baseline" else " + echo")
        for ax, column in ((acc, "accuracy"), (deg, "all_correct_groups")):
            steps, values = series(run, column)
            ax.plot(steps, values, color=colors[run], alpha=0.3, lw=1)
            ax.plot(steps, trailing_mean(values, SMOOTHING), color=colors[run], lw=2, label=label)
    acc.set_title(f"accuracy of the training rollouts ({SMOOTHING}-step mean)")
    deg.set_title(f"all-correct groups: zero advantages ({SMOOTHING}-step mean)")
    for ax in (acc, deg):
        ax.set_ylim(-0.02, 1.02)
        ax.legend(loc="lower right")

    floor = 1e-9  # an exact zero is drawn at the bottom of the log axis
    for run, style in (("baseline", "--"), ("echo", "-")):
        steps, values = series(run, "rl_grad_norm")
        grad.plot(steps, [max(v, floor) for v in values], style, color="tab:red", label=f"RL term ({run} run)")
    steps, values = series("echo", "echo_grad_norm")
    grad.plot(steps, [max(v, floor) for v in values], color="tab:blue", label="echo term (echo run)")
    grad.set_yscale("log")
    grad.set_title("gradient norm of each term (all parameters)")
    grad.legend(loc="lower left", fontsize=8)

    steps, values = series("echo", "rl_token_grad_all_correct")
    token.plot(steps, values, color="tab:red", marker="o", ms=3, label="RL term")
    steps, values = series("echo", "echo_token_grad_all_correct")
    token.plot(steps, values, color="tab:blue", marker="o", ms=3, label="echo term")
    token.set_title("gradient reaching the tokens of all-correct groups\n(echo run; d loss / d log-prob, L2)")
    token.legend(loc="upper left")

    loss.plot(*series("echo", "echo_loss"), color="tab:blue")
    loss.set_title("J_echo: mean NLL of the EchoClips (echo run)")
    clips.plot(*series("echo", "clips"), color="tab:blue", label="clips per step")
    clips.set_title("EchoClips mined per step (echo run)")
    for ax in axes.flat:
        ax.set_xlabel("GRPO step")
        ax.grid(alpha=0.3)
    evals = summary["eval"]
    finals = ", ".join(f"{run} {evals[run]['greedy']:.2f}" for run in runs)
    fig.suptitle(
        f"EchoRL tiny CPU experiment: held-out greedy accuracy start {evals['start']['greedy']:.2f} -> {finals} "
        f"(seed {summary['settings']['seed']})"
    )
    fig.tight_layout()
    return figure_png(fig, dpi=90, tight=False)


def _mean_where(rows, run, column, lo=None, hi=None) -> float:
    values = [r[column] for r in rows if r["run"] == run and not math.isnan(r[column])]
    values = values[lo:hi]
    return sum(values) / len(values) if values else math.nan


# ------------------------------------------------------------------------------------------------ reproducibility
ENVIRONMENT_PACKAGES = ("torch", "transformers", "tokenizers", "trl", "accelerate", "datasets", "numpy", "pillow")
"""The packages whose versions a run's numbers depend on (recorded in ``summary.json``)."""


def environment() -> dict[str, Any]:
    """What besides the settings decides the numbers: package versions, the CPU kernels torch picked, threads."""
    import importlib.metadata
    import platform

    import torch

    versions = {}
    for name in ENVIRONMENT_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # the SIMD kernels in use (AVX2, AVX512, ...)
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "packages": versions,
    }


def fingerprint(folder: Path) -> str:
    """Short hash of a saved model's weights: two runs that start (or warm up) alike have the same one."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("model.safetensors", "tokenizer.json"):
        path = folder / name
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


class _Reproducible:
    """While active: ``threads`` torch threads and deterministic algorithms (an op without a deterministic
    implementation raises instead of silently varying); both restored on exit."""

    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        self.saved = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(True)
        return self

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.saved[0])
        torch.use_deterministic_algorithms(self.saved[1])


# ------------------------------------------------------------------------------------------------ driver
def _trace_folder(out: Path, run: str) -> Path:
    """Where a run's traces go: ``traces/`` for the echo run, ``traces_<variant>/`` for a variant's."""
    return out / ("traces" if run in RUNS else f"traces_{run}")


def run_experiment(out: str | Path, settings: ExperimentSettings, *, progress=None) -> dict:
    """Run everything; returns the summary (also written to ``out/summary.json``). The outputs (``metrics.csv``,
    ``plot.png``, ``summary.json`` and the trace folders) are written all or nothing (:mod:`echovl.outputs`): a run
    that fails leaves those of the previous run as they were; ``work/`` (the models) is scratch, made anew."""
    out = Path(out)
    shutil.rmtree(out / "work", ignore_errors=True)
    with _Reproducible(settings.threads), Outputs() as outputs:
        return _run_experiment(out, settings, progress, outputs)


def _run_experiment(out: Path, settings: ExperimentSettings, progress, outputs: Outputs) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from transformers.utils import logging as hf_logging

    from .digits import make_problems

    progress = progress or stage_progress
    hf_logging.set_verbosity_error()
    started = time.perf_counter()
    timing: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timing[name] = round(now - since, 1)
        return now

    mark = time.perf_counter()
    base = build_model(out / "work" / "model_base", settings)
    processor = AutoProcessor.from_pretrained(base, padding_side="left")
    train = make_problems(settings.train_problems, seed=settings.seed)
    probe = make_problems(settings.probe_problems, seed=settings.seed + 1)
    evaluation = make_problems(settings.eval_problems, seed=settings.seed + 2)
    mark = lap("build", mark)

    torch.manual_seed(settings.seed)
    model = AutoModelForImageTextToText.from_pretrained(base)
    warmup = warm_up(model, processor, train, probe, settings, progress)
    if warmup["probe_accuracy"] < settings.warmup_target:
        print(
            f"warning: the warm-up stopped at its cap ({settings.warmup_max_steps} steps) with probe accuracy "
            f"{warmup['probe_accuracy']:.2f} < target {settings.warmup_target}: GRPO starts from a model that "
            "rarely solves the task, so few groups are all-correct and echo has little to do",
            file=sys.stderr,
        )
    start = out / "work" / "model_warmup"
    model.save_pretrained(start, safe_serialization=True)
    warmup["fingerprint"] = fingerprint(start)
    mark = lap("warmup", mark)

    def evaluate(model) -> dict[str, float]:
        kwargs = {"max_new_tokens": settings.max_completion_length, "seed": settings.seed + 3}
        greedy_texts, greedy = generate_answers(model, processor, evaluation, temperature=0, **kwargs)
        _, sampled = generate_answers(model, processor, evaluation, temperature=settings.temperature, **kwargs)
        return {"greedy": round(greedy, 4), "sampled": round(sampled, 4), "example": greedy_texts[0]}

    evals = {"start": evaluate(model)}
    del model
    mark = lap("eval_start", mark)

    dataset = _dataset(train)
    rows: list[dict] = []
    for run in settings.runs:
        traces = outputs.folder(_trace_folder(out, run)) if run != "baseline" else None
        run_rows, trained = run_grpo(run, start, processor, dataset, settings, out, progress, traces)
        rows += run_rows
        mark = lap(f"grpo_{run}", mark)
        evals[run] = evaluate(trained)
        del trained
        mark = lap(f"eval_{run}", mark)

    half = max(settings.steps // 2, 1)
    outcome = {
        run: {
            "train_accuracy_first_half": _mean_where(rows, run, "accuracy", hi=half),
            "train_accuracy_second_half": _mean_where(rows, run, "accuracy", lo=half),
            "all_correct_groups_first_half": _mean_where(rows, run, "all_correct_groups", hi=half),
            "all_correct_groups_second_half": _mean_where(rows, run, "all_correct_groups", lo=half),
            "rl_grad_norm_first_half": _mean_where(rows, run, "rl_grad_norm", hi=half),
            "rl_grad_norm_second_half": _mean_where(rows, run, "rl_grad_norm", lo=half),
        }
        for run in settings.runs
    }
    echo_rows = [r for r in rows if r["run"] == "echo"]
    outcome["echo"]["max_rl_token_grad_all_correct"] = max(
        (r["rl_token_grad_all_correct"] for r in echo_rows), default=0.0
    )
    outcome["echo"]["min_echo_grad_norm"] = min((r["echo_grad_norm"] for r in echo_rows), default=math.nan)
    outcome["echo"]["steps_with_all_correct_groups"] = sum(r["all_correct_groups"] > 0 for r in echo_rows)
    summary = {
        "settings": {**asdict(settings), "runs": list(settings.runs)},
        "warmup": warmup,
        "eval": evals,
        "outcome": outcome,
        "timing_s": timing,
        "runtime_s": round(time.perf_counter() - started, 1),
        "environment": environment(),
        "model_fingerprint": fingerprint(base),
        "files": {
            "metrics": str(out / "metrics.csv"),
            "plot": str(out / "plot.png"),
            "traces": str(out / "traces"),
            "summary": str(out / "summary.json"),
        },
    }
    plot = plot_metrics(rows, summary)
    summary["runtime_s"] = round(time.perf_counter() - started, 1)
    outputs.write(out / "metrics.csv", metrics_csv(rows))
    outputs.write(out / "plot.png", plot)
    outputs.write(out / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
    return summary


def _report(summary: dict) -> str:
    files, evals, outcome = summary["files"], summary["eval"], summary["outcome"]
    env = summary["environment"]
    packages = ", ".join(f"{name} {env['packages'][name]}" for name in ("torch", "transformers", "tokenizers", "trl"))
    lines = [
        "",
        f"Done in {summary['runtime_s']:.0f} s ({env['torch_threads']} torch threads).",
        f"Environment: {packages}; CPU kernels {env['cpu_capability']}.",
        f"Fingerprints: model {summary['model_fingerprint']}, warm start {summary['warmup']['fingerprint']}.",
        f"Warm-up: {summary['warmup']['steps']} supervised steps, probe accuracy {summary['warmup']['probe_accuracy']:.2f}.",
        "Held-out accuracy (greedy / sampled):",
    ]
    runs = summary["settings"].get("runs", RUNS)
    width = max(9, *(len(run) + 1 for run in runs))
    for name in ("start", *runs):
        lines.append(f"  {name:<{width}}{evals[name]['greedy']:.2f} / {evals[name]['sampled']:.2f}")
    for run in runs:
        o = outcome[run]
        lines.append(
            f"{run}: rollout accuracy {o['train_accuracy_first_half']:.2f} -> {o['train_accuracy_second_half']:.2f}, "
            f"all-correct groups {o['all_correct_groups_first_half']:.2f} -> {o['all_correct_groups_second_half']:.2f}, "
            f"RL grad norm {o['rl_grad_norm_first_half']:.3g} -> {o['rl_grad_norm_second_half']:.3g} (first -> second half)"
        )
    echo = outcome["echo"]
    lines += [
        f"echo run: RL gradient on all-correct groups' tokens, max over steps = {echo['max_rl_token_grad_all_correct']:.3g}; "
        f"echo-term gradient norm >= {echo['min_echo_grad_norm']:.3g} on every step.",
        "",
        f"metrics: {files['metrics']}",
        f"plot:    {files['plot']}",
        f"traces:  {files['traces']}",
        f"summary: {files['summary']}",
        f"Open the traces in the demo:  python demo/app.py --traces {files['traces']}",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ several seeds
def parse_seeds(spec: str) -> list[int]:
    """``"0-4"``, ``"0,2,5"`` or ``"1-3,7"`` -> the seeds, in order, each once."""
    seeds: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            values = range(int(low), int(high) + 1) if dash else [int(part)]
        except ValueError:
            raise ValueError(f"--seeds: {part!r} is not a seed or a range like 0-4") from None
        if dash and int(high) < int(low):
            raise ValueError(f"--seeds: the range {part!r} is empty")
        seeds += [s for s in values if s not in seeds]
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds needs seeds >= 0, got {spec!r}")
    return seeds


def parse_variant(spec: str) -> tuple[str, dict[str, Any]]:
    """``"NAME:key=value,key=value"`` -> ``(NAME, {key: value})``, the values read as YAML scalars and checked
    against :class:`~echovl.config.EchoConfig` (an unknown key or a bad value names the key)."""
    import yaml

    from ..config import EchoConfig

    name, colon, body = spec.partition(":")
    name = name.strip()
    if not colon or not name or not body.strip():
        raise ValueError(f"--variant {spec!r}: expected NAME:key=value[,key=value...], e.g. soft:selection=soft")
    if name in RUNS or not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"--variant {spec!r}: the name must be letters, digits, - or _, and not baseline or echo")
    overrides: dict[str, Any] = {}
    for item in body.split(","):
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--variant {spec!r}: {item!r} is not key=value")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    try:
        EchoConfig.from_dict({"enable": True, **overrides})
    except (TypeError, ValueError) as error:
        raise ValueError(f"--variant {name}: {error}") from None
    return name, overrides


def run_seeds(out: str | Path, settings: ExperimentSettings, seeds: Sequence[int], *, progress=None) -> dict:
    """The experiment once per seed (``<out>/seed_<s>``), then the paired differences to the baseline over the
    seeds (``seeds.json``, ``seeds.csv``); returns that comparison."""
    from ..eval.stats import paired_t_interval

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for index, seed in enumerate(seeds, start=1):
        seed_settings = replace(settings, seed=seed)
        done = _finished_summary(out / f"seed_{seed}", seed_settings)
        if done is not None:
            print(
                f"seed {seed} ({index} of {len(seeds)}): reusing {out / f'seed_{seed}'} (same settings)",
                file=sys.stderr,
            )
            summaries.append(done)
            continue
        print(f"seed {seed} ({index} of {len(seeds)})", file=sys.stderr)
        summaries.append(run_experiment(out / f"seed_{seed}", seed_settings, progress=progress))
    rows = [
        {
            "seed": seed,
            "run": run,
            "greedy": summary["eval"][run]["greedy"],
            "sampled": summary["eval"][run]["sampled"],
        }
        for seed, summary in zip(seeds, summaries)
        for run in ("start", *settings.runs)
    ]
    comparison: dict[str, Any] = {"seeds": list(seeds), "runs": list(settings.runs), "differences": {}}
    for run in settings.runs[1:]:
        comparison["differences"][run] = {}
        for metric in ("greedy", "sampled"):
            base = [s["eval"]["baseline"][metric] for s in summaries]
            other = [s["eval"][run][metric] for s in summaries]
            interval = paired_t_interval(base, other)
            comparison["differences"][run][metric] = {
                "per_seed": [round(b - a, 4) for a, b in zip(base, other)],
                "mean": interval.difference,
                "low": interval.low,
                "high": interval.high,
            }
    comparison["runtime_s"] = round(sum(s["runtime_s"] for s in summaries), 1)
    comparison["warmup_short_of_target"] = [
        {"seed": seed, "probe_accuracy": summary["warmup"]["probe_accuracy"]}
        for seed, summary in zip(seeds, summaries)
        if "warmup" in summary and summary["warmup"]["probe_accuracy"] < settings.warmup_target
    ]
    write_files(
        {
            out / "seeds.csv": csv_text(rows, ("seed", "run", "greedy", "sampled")),
            out / "seeds.json": json.dumps(comparison, indent=2, default=float) + "\n",
        }
    )
    return comparison


def _finished_summary(out: Path, settings: ExperimentSettings) -> dict | None:
    """A seed's ``summary.json`` when that run finished with exactly these settings (so an interrupted
    ``--seeds`` run resumes at the first unfinished seed), else None."""
    path = out / "summary.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    expected = json.loads(json.dumps({**asdict(settings), "runs": list(settings.runs)}, default=float))
    return summary if summary.get("settings") == expected else None


def _seeds_report(comparison: dict, out: Path) -> str:
    seeds = comparison["seeds"]
    lines = [
        "",
        f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), {comparison['runtime_s']:.0f} s in all.",
        "Held-out accuracy, difference to the baseline (mean over seeds, 95% t-interval over the seeds):",
    ]
    starred = False
    for run, metrics in comparison["differences"].items():
        cells = []
        for metric in ("greedy", "sampled"):
            d = metrics[metric]
            low, high = d["low"], d["high"]
            sign = "" if math.isnan(low) or low <= 0 <= high else " *"
            starred = starred or bool(sign)
            cells.append(f"{metric} {d['mean']:+.3f} [{low:+.3f}, {high:+.3f}]{sign}")
        lines.append(f"  {run} - baseline: {'; '.join(cells)}")
        lines.append(f"    per seed (greedy): {', '.join(f'{v:+.2f}' for v in metrics['greedy']['per_seed'])}")
    if starred:
        lines.append("  * the interval excludes 0.")
    for short in comparison.get("warmup_short_of_target", []):
        lines.append(
            f"  ! seed {short['seed']}: the warm-up ended short of its target (probe accuracy "
            f"{short['probe_accuracy']:.2f}), so its runs start from a model that rarely solves the task."
        )
    lines += [
        f"per seed: {out}/seed_<s>/ (metrics.csv, plot.png, summary.json, traces)",
        f"table:    {out / 'seeds.csv'}",
        f"summary:  {out / 'seeds.json'}",
    ]
    return "\n".join(lines)


@dataclass
class ExperimentOptions:
    """``python -m echovl.experiments.tiny_cpu``'s options: :class:`ExperimentSettings` (``--quick``'s or the
    default ones) with the options given, the seeds, the variants."""

    out: str = option("runs/tiny_cpu_echo", help="output folder")
    seed: int = option(0, help="seed of data, model, warm-up and both GRPO runs")
    steps: int | None = option(None, help="GRPO steps per run (default 40; quick: 2)")
    coef: float | None = option(None, help="lambda of the echo run (default 0.001)")
    quick: bool = option(False, help="a few steps at tiny sizes (a pipeline check)")
    threads: int | None = option(None, help="torch CPU threads (default 2, on every machine: see README)")
    seeds: str | None = option(
        None, help="run the whole experiment for each seed (e.g. 0-4 or 0,3,7) and report the paired differences"
    )
    variant: list[str] = option(
        default_factory=list,
        action="append",
        metavar="NAME:KEY=VALUE[,KEY=VALUE]",
        help="one more echo run with other echo: settings, e.g. soft:selection=soft,soft_temperature=0.5 (repeatable)",
    )
    settings: ExperimentSettings = field(init=False)
    """What the options make (checked)."""
    seed_list: list[int] | None = field(init=False)
    """``--seeds`` as a list (None without it)."""

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 1:
            raise OptionError("--steps must be >= 1")
        if self.coef is not None and not (math.isfinite(self.coef) and self.coef >= 0):
            raise OptionError("--coef must be a finite number >= 0")
        if self.threads is not None and self.threads < 1:
            raise OptionError("--threads must be >= 1")
        if self.seeds is not None and self.seed != 0:
            raise OptionError("give --seed or --seeds, not both")
        settings = ExperimentSettings.quick(self.seed) if self.quick else ExperimentSettings(seed=self.seed)
        given = {name: getattr(self, name) for name in ("steps", "coef", "threads") if getattr(self, name) is not None}
        self.settings = replace(settings, **given)
        try:
            for spec in self.variant:
                name, overrides = parse_variant(spec)
                if name in self.settings.variants:
                    raise ValueError(f"--variant {name} is given twice")
                self.settings.variants[name] = overrides
            self.seed_list = parse_seeds(self.seeds) if self.seeds is not None else None
        except ValueError as error:
            raise OptionError(str(error)) from None


def _run(options: ExperimentOptions) -> None:
    if options.seed_list is None:
        print(_report(run_experiment(options.out, options.settings)))
    else:
        print(_seeds_report(run_seeds(options.out, options.settings, options.seed_list), Path(options.out)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = command_parser(
        ExperimentOptions,
        prog="python -m echovl.experiments.tiny_cpu",
        description="EchoRL CPU mini-experiment: GRPO with and without echo on a tiny Qwen2.5-VL (digit sums).",
    )
    return run_command(parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
