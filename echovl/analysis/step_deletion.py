"""Evidence 2: are high-entropy steps the critical ones? ``python -m echovl.analysis.step_deletion --model M
--data FILE --out DIR``.

The model's verified rollouts (sampled here, or read from an earlier run's ``rollouts.jsonl`` with ``--rollouts``)
are split into steps at the training delimiters and each step gets its entropy (mean token entropy over its text
tokens, teacher-forced at the sampling temperature: :mod:`echovl.analysis.common`). Then, for each fraction ``f``
(``--fractions``, default 0, 0.1, ..., 0.5) and each order (``--orders``: ``high`` entropy first, ``low`` first,
``random``), the first ``k`` steps of the order are deleted from the reasoning, the model is given the prompt (built
as in training) with the edited reasoning as the start of its response, generates the rest (``--answers`` samples of
at most ``--answer-tokens`` tokens), and the result is graded by the training reward's grader. The paper reports
that accuracy collapses when high-entropy steps go first and barely moves when low-entropy ones do.

What is deleted, exactly:

- **The answer is never given.** The step holding the final answer (the last ``\\boxed{}``; without a box, the last
  step) and everything after it are cut from every edit, also at ``f = 0``: the model has to state the answer
  itself from what is left. Otherwise the answer would be copied from the reasoning it is given, and deleting
  other steps could not change it.
- **Deletable steps** are the steps before the answer step that hold text tokens, except format steps (only
  ``<think>`` / ``</think>`` tags and whitespace), which stay where they are and do not count. So a response that
  closes its think block on its own line still hands over to the answer at the same place.
- ``k = round(f * n)`` with halves rounded up (``floor(f * n + 1/2)``, computed exactly), ``n`` the rollout's
  deletable steps; rollouts with fewer than ``--min-steps`` deletable steps are left out (counted in the summary).
- Orders: ``high`` deletes the steps of highest entropy first, ``low`` the lowest first (ties: the earlier step
  first), ``random`` a random order per rollout (seeded by ``--seed``, the rollout's row and sample). Each order is
  one ranking, so a larger fraction deletes a superset of the steps of a smaller one; the kept steps stay in order.
- Edits that delete the same steps of a rollout (every order at ``f = 0``, for instance) are generated once and
  share their answers.

Accuracy at a fraction and order is the mean over problems of the fraction of the problem's edited rollouts (and
answers) graded correct, with a bootstrap interval over problems; ``change`` is the paired difference to ``f = 0``.

Outputs in ``--out`` (all or none, once the analysis has finished: :mod:`echovl.outputs`): ``summary.md`` (also
printed), ``summary.json``, ``accuracy.csv`` (per order and fraction), ``accuracy.png`` (accuracy against the fraction
deleted, one line per order), ``deletions.csv`` (per rollout, order, fraction and answer: which steps were deleted,
the verdict), ``steps.csv`` (every step of the analysed rollouts: kind, text tokens, entropy, rank in each order),
``continuations.jsonl`` (each distinct edit: the edited reasoning and the model's continuations), ``rollouts.jsonl``.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from ..cli import option, progress_bar
from ..eval.stats import paired_bootstrap
from ..inference import Backend, ScoredResponse, mix_seed
from ..outputs import csv_text, figure_png, write_files
from ..reward.math import GRADER_VERSION, judge
from .common import (
    AnalysisConfig,
    AnalysisError,
    Rollout,
    analysis_main,
    generate,
    no_verified_rollout,
    pyplot,
    rollouts_jsonl,
    start_analysis,
)

__all__ = [
    "DEFAULT_FRACTIONS",
    "ORDERS",
    "StepDeletionConfig",
    "classify_steps",
    "deletion_plan",
    "deletion_ranking",
    "main",
    "run",
    "steps_to_delete",
]

ORDERS = ("high", "low", "random")
DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FORMAT_STEP = re.compile(r"\s*(?:</?think>\s*)*")

ACCURACY_COLUMNS = (
    "order",
    "fraction",
    "accuracy",
    "low",
    "high",
    "change",
    "change_low",
    "change_high",
    "problems",
    "rollouts",
    "answers",
    "mean_deleted",
    "mean_deleted_fraction",
)
DELETION_COLUMNS = (
    "problem_index",
    "problem_id",
    "row",
    "sample",
    "order",
    "fraction",
    "steps",
    "k",
    "deleted",
    "answer_sample",
    "correct",
    "extracted",
)
STEP_COLUMNS = (
    "problem_index",
    "problem_id",
    "row",
    "sample",
    "step",
    "kind",
    "text_tokens",
    "entropy",
    "rank_high",
    "rank_low",
    "rank_random",
)


@dataclass(kw_only=True)
class StepDeletionConfig(AnalysisConfig):
    fractions: list[float] = option(
        default_factory=lambda: list(DEFAULT_FRACTIONS),
        help="fractions of the reasoning steps to delete (default: 0 0.1 0.2 0.3 0.4 0.5)",
    )
    orders: list[str] = option(
        default_factory=lambda: list(ORDERS),
        choices=ORDERS,
        help="deletion orders: high (entropy first), low, random (default: all three)",
    )
    answers: int = option(1, help="answers sampled per edited rollout")
    answer_tokens: int = option(1024, help="most tokens per answer")
    min_steps: int = option(2, help="leave out rollouts with fewer deletable steps")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.fractions or any(not 0 <= f < 1 for f in self.fractions):
            raise AnalysisError(f"--fractions must be in [0, 1), got {self.fractions}")
        self.fractions = sorted(set(float(f) for f in self.fractions))
        unknown = [o for o in self.orders if o not in ORDERS]
        if not self.orders or unknown:
            raise AnalysisError(f"--orders must be among {', '.join(ORDERS)}, got {self.orders}")
        self.orders = [o for o in ORDERS if o in self.orders]
        for name in ("answers", "answer_tokens", "min_steps"):
            if getattr(self, name) < 1:
                raise AnalysisError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------------------ the plan


def steps_to_delete(count: int, fraction: float) -> int:
    """``k = floor(fraction * count + 1/2)``: round half up, exactly for decimal fractions (``0.5 * 3 -> 2``)."""
    return math.floor(Fraction(repr(float(fraction))) * count + Fraction(1, 2))


def deletion_ranking(entropies: Sequence[float], order: str, rng: random.Random | None = None) -> list[int]:
    """Positions of ``entropies`` in the order their steps are deleted: ``high`` by descending entropy, ``low`` by
    ascending entropy (ties: the earlier step first), ``random`` a permutation drawn from ``rng``."""
    positions = list(range(len(entropies)))
    if order == "high":
        return sorted(positions, key=lambda i: (-entropies[i], i))
    if order == "low":
        return sorted(positions, key=lambda i: (entropies[i], i))
    if order == "random":
        if rng is None:
            raise ValueError("the random order needs an rng")
        rng.shuffle(positions)
        return positions
    raise ValueError(f"unknown order {order!r} ({', '.join(ORDERS)})")


def deletion_plan(ranking: Sequence[int], fractions: Sequence[float]) -> dict[float, tuple[int, ...]]:
    """Per fraction, the deleted positions (ascending): the first ``steps_to_delete(len(ranking), f)`` of
    ``ranking``."""
    return {f: tuple(sorted(ranking[: steps_to_delete(len(ranking), f)])) for f in fractions}


def classify_steps(scored: ScoredResponse) -> tuple[list[str], int]:
    """The kind of each step and the answer step's index.

    Kinds: ``answer`` (the step holding the start of the last ``\\boxed{``/``\\fbox{``, else the last step that is not a
    format step), ``after`` (after it), and before it ``format`` (only think tags and whitespace), ``empty`` (no
    text token) or ``reasoning`` (deletable).
    """
    steps = scored.steps
    text = "".join(s.text for s in steps)
    boxes = list(_BOX.finditer(text))
    answer = None
    if boxes:
        position, start = boxes[-1].start(), 0
        for s in steps:
            if start <= position < start + len(s.text):
                answer = s.index
                break
            start += len(s.text)
    if answer is None:
        content = [s.index for s in steps if not _FORMAT_STEP.fullmatch(s.text)]
        answer = content[-1] if content else len(steps)
    kinds = []
    for s in steps:
        if s.index == answer:
            kinds.append("answer")
        elif s.index > answer:
            kinds.append("after")
        elif _FORMAT_STEP.fullmatch(s.text):
            kinds.append("format")
        elif s.tokens == 0 or math.isnan(s.entropy):
            kinds.append("empty")
        else:
            kinds.append("reasoning")
    return kinds, answer


@dataclass
class _Analysed:
    """One verified rollout in the analysis."""

    rollout: Rollout
    scored: ScoredResponse
    answer_step: int
    deletable: list[int]
    """Step indices that may be deleted."""
    plans: dict[str, dict[float, tuple[int, ...]]]
    """Per order and fraction, the deleted step indices (ascending)."""

    @property
    def key(self) -> tuple[int, int]:
        return self.rollout.problem.index, self.rollout.sample

    def prefix_ids(self, deleted: Sequence[int]) -> list[int]:
        """The response's ids before the answer step, without the ``deleted`` steps."""
        gone = set(deleted)
        ids = self.scored.ids
        return [t for s in self.scored.steps[: self.answer_step] if s.index not in gone for t in ids[s.start : s.end]]


# ------------------------------------------------------------------------------------------------------ the run


def _accuracy_rows(config: StepDeletionConfig, analysed: list[_Analysed], verdicts: dict) -> list[dict]:
    """One row per order and fraction (see the module docstring)."""
    problems = sorted({a.rollout.problem.index for a in analysed})

    def interval(a, b):
        return paired_bootstrap([a], [b], resamples=config.bootstrap, confidence=config.confidence, seed=config.seed)

    rows = []
    for order in config.orders:
        base = None
        for fraction in config.fractions:
            per_problem: dict[int, list[bool]] = {p: [] for p in problems}
            for a in analysed:
                per_problem[a.rollout.problem.index] += verdicts[(a.key, a.plans[order][fraction])]
            scores = np.array([np.mean(per_problem[p]) for p in problems])
            accuracy = interval(np.zeros_like(scores), scores)
            deleted = [len(a.plans[order][fraction]) for a in analysed]
            row = {
                "order": order,
                "fraction": fraction,
                "accuracy": accuracy.difference,
                "low": accuracy.low,
                "high": accuracy.high,
                "problems": len(problems),
                "rollouts": len(analysed),
                "answers": sum(len(v) for v in per_problem.values()),
                "mean_deleted": float(np.mean(deleted)),
                "mean_deleted_fraction": float(np.mean([k / len(a.deletable) for k, a in zip(deleted, analysed)])),
            }
            if fraction == 0.0:
                base = scores
            if base is not None:
                change = interval(base, scores)
                row.update(change=change.difference, change_low=change.low, change_high=change.high)
            rows.append(row)
    return rows


def _figure(rows: list[dict], config, title: str) -> bytes:
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = {"high": "tab:red", "low": "tab:blue", "random": "tab:gray"}
    labels = {"high": "high entropy first", "low": "low entropy first", "random": "random"}
    for order in config.orders:
        mine = [r for r in rows if r["order"] == order]
        x = [100 * r["fraction"] for r in mine]
        y = [100 * r["accuracy"] for r in mine]
        ax.plot(x, y, marker="o", color=colors[order], label=labels[order])
        ax.fill_between(
            x, [100 * r["low"] for r in mine], [100 * r["high"] for r in mine], color=colors[order], alpha=0.12
        )
    ax.set_xlabel("steps deleted (% of each rollout's reasoning steps)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title, fontsize=9)
    figure.tight_layout()
    return figure_png(figure)


def _markdown(summary: dict, rows: list[dict], config) -> str:
    c = summary["counts"]
    level = round(config.confidence * 100)
    lines = [
        f"Accuracy (%) of {summary['model']} answering from its own verified rollouts with steps deleted: "
        f"{c['analysed_rollouts']} rollouts of {c['problems']} problems ({c['verified']} of {c['rollouts']} rollouts "
        f"verified; {c['too_few_steps']} with fewer than {config.min_steps} deletable steps left out; "
        f"{c['mean_deletable_steps']:.1f} deletable steps per rollout on average), {config.answers} answer(s) per "
        f"edit, temperature {config.temperature}. [{level}% bootstrap interval over problems]",
        "",
        "| order | " + " | ".join(f"{100 * f:g}%" for f in config.fractions) + " |",
        "|---|" + "---:|" * len(config.fractions),
    ]
    for order in config.orders:
        cells = [
            f"{100 * r['accuracy']:.1f} [{100 * r['low']:.1f}, {100 * r['high']:.1f}]"
            for r in rows
            if r["order"] == order
        ]
        lines.append(f"| {order} | " + " | ".join(cells) + " |")
    if config.fractions[0] == 0.0 and len(config.fractions) > 1:
        last = config.fractions[-1]
        lines += ["", f"Change from 0% to {100 * last:g}% deleted, in points (paired over problems):", ""]
        for r in rows:
            if r["fraction"] == last:
                lines.append(
                    f"- {r['order']}: {100 * r['change']:+.1f} [{100 * r['change_low']:+.1f}, "
                    f"{100 * r['change_high']:+.1f}]"
                )
    return "\n".join(lines) + "\n"


def run(config: StepDeletionConfig, *, backend_factory: Callable[..., Backend] | None = None) -> dict:
    """The analysis of ``config``; returns ``summary.json``'s content (also written to ``config.out``).

    ``backend_factory(name, model_path, **options)`` builds the generation backend (default
    :func:`echovl.inference.load_backend`); tests pass fakes.
    """
    session, problems, prompts, rollouts = start_analysis(config, backend_factory, generates=True)
    backend, builder = session.backend(), session.builder()
    verified = [r for r in rollouts if r.correct]
    if not verified:
        raise no_verified_rollout(config, rollouts)

    # steps and their entropy
    scorer = session.scorer()
    analysed: list[_Analysed] = []
    step_rows = []
    too_few = 0
    bar = progress_bar(total=len(verified), desc="entropy", unit="rollouts", enable=config.show_progress)
    for r in verified:
        scored = scorer.score(prompts[r.problem.index], r.response)
        bar.update(1)
        kinds, answer_step = classify_steps(scored)
        deletable = [s.index for s, kind in zip(scored.steps, kinds) if kind == "reasoning"]
        entropies = [scored.steps[i].entropy for i in deletable]
        rng = random.Random(mix_seed(config.seed, "random", r.problem.row, r.sample))
        rankings = {o: [deletable[i] for i in deletion_ranking(entropies, o, rng)] for o in ORDERS}
        ranks = {o: {step: rank for rank, step in enumerate(rankings[o])} for o in ORDERS}
        base = {"problem_index": r.problem.index, "problem_id": r.problem.id, "row": r.problem.row, "sample": r.sample}
        step_rows += [
            dict(
                base,
                step=s.index,
                kind=kind,
                text_tokens=s.tokens,
                entropy=s.entropy,
                **{f"rank_{o}": ranks[o].get(s.index) for o in ORDERS},
            )
            for s, kind in zip(scored.steps, kinds)
        ]
        if len(deletable) < config.min_steps:
            too_few += 1
            continue
        plans = {o: deletion_plan(rankings[o], config.fractions) for o in config.orders}
        analysed.append(_Analysed(r, scored, answer_step, deletable, plans))
    bar.close()
    if not analysed:
        raise AnalysisError(
            f"none of the {len(verified)} verified rollouts has {config.min_steps} or more deletable steps (reasoning "
            "steps before the answer): lower --min-steps, or check --delimiters (the steps are split there)"
        )

    # the distinct edits, their continuations and verdicts
    edits: dict[tuple, tuple[_Analysed, tuple[int, ...]]] = {}
    for a in analysed:
        for plan in a.plans.values():
            for deleted in plan.values():
                edits.setdefault((a.key, deleted), (a, deleted))
    keys = list(edits)
    continuations = [
        builder.continuation(prompts[a.rollout.problem.index], a.prefix_ids(d)) for a, d in edits.values()
    ]
    seeds = [mix_seed("answer", a.rollout.problem.row, a.rollout.sample, *d) for a, d in edits.values()]
    sampling = config.sampling(config.answers, config.answer_tokens)
    bar = progress_bar(total=len(keys) * config.answers, desc="answers", unit="samples", enable=config.show_progress)
    texts = generate(backend, continuations, sampling, seeds, bar)
    bar.close()
    verdicts: dict[tuple, list[bool]] = {}
    extracted: dict[tuple, list] = {}
    continuation_lines = []
    for key, prompt, answers in zip(keys, continuations, texts):
        a, deleted = edits[key]
        judged = [
            judge(prompt.prefix_text + t, a.rollout.problem.answer, think_opened=prompt.think_opened) for t in answers
        ]
        verdicts[key] = [bool(j.correct) for j in judged]
        extracted[key] = [j.answer for j in judged]
        record = {
            "problem_index": a.rollout.problem.index,
            "row": a.rollout.problem.row,
            "sample": a.rollout.sample,
            "deleted": list(deleted),
            "prefix": prompt.prefix_text,
            "continuations": answers,
            "answers": extracted[key],
            "correct": verdicts[key],
        }
        continuation_lines.append(json.dumps(record, ensure_ascii=False) + "\n")

    deletion_rows = []
    for a in analysed:
        p = a.rollout.problem
        for order in config.orders:
            for fraction in config.fractions:
                deleted = a.plans[order][fraction]
                for j, (correct, answer) in enumerate(zip(verdicts[(a.key, deleted)], extracted[(a.key, deleted)])):
                    deletion_rows.append(
                        {
                            "problem_index": p.index,
                            "problem_id": p.id,
                            "row": p.row,
                            "sample": a.rollout.sample,
                            "order": order,
                            "fraction": fraction,
                            "steps": len(a.deletable),
                            "k": len(deleted),
                            "deleted": " ".join(map(str, deleted)),
                            "answer_sample": j,
                            "correct": correct,
                            "extracted": answer,
                        }
                    )
    rows = _accuracy_rows(config, analysed, verdicts)
    summary = {
        "model": session.model_ref.name,
        "model_path": session.model_ref.path,
        "settings": dict(asdict(config), out=str(config.out), grader_version=GRADER_VERSION),
        "counts": {
            "problems": len({a.rollout.problem.index for a in analysed}),
            "rollouts": len(rollouts),
            "verified": len(verified),
            "analysed_rollouts": len(analysed),
            "too_few_steps": too_few,
            "mean_deletable_steps": float(np.mean([len(a.deletable) for a in analysed])),
            "edits": len(keys),
        },
        "accuracy": rows,
    }
    markdown = _markdown(summary, rows, config)
    figure = _figure(
        rows,
        config,
        f"{session.model_ref.name}: {len(analysed)} verified rollouts of {summary['counts']['problems']} problems, "
        f"T = {config.temperature}",
    )
    write_files(
        {
            config.out / "steps.csv": csv_text(step_rows, STEP_COLUMNS),
            config.out / "deletions.csv": csv_text(deletion_rows, DELETION_COLUMNS),
            config.out / "accuracy.csv": csv_text(rows, ACCURACY_COLUMNS),
            config.out / "continuations.jsonl": "".join(continuation_lines),
            config.out / "rollouts.jsonl": rollouts_jsonl(rollouts, prompts),
            config.out / "accuracy.png": figure,
            config.out / "summary.md": markdown,
            config.out / "summary.json": json.dumps(summary, indent=2, default=str) + "\n",
        }
    )
    print(markdown, end="")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    return analysis_main(
        "step_deletion",
        StepDeletionConfig,
        run,
        argv,
        description="Delete 0-50% of the steps of the model's verified rollouts in order of step entropy (high "
        "first, low first, random), let the model answer from the edited reasoning, and measure accuracy (the "
        "paper's Evidence 2). Writes summary.md/json, accuracy.csv/png, deletions.csv, steps.csv, "
        "continuations.jsonl and rollouts.jsonl into --out.",
    )


if __name__ == "__main__":
    raise SystemExit(main())
