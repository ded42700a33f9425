"""From graded samples to the paper's table: accuracies, ID / OOD averages, differences with bootstrap intervals.

- A benchmark's accuracy is the mean over its problems of the mean correctness of the problem's ``k`` samples
  (avg@k; with the same ``k`` for every problem this is the mean over all samples, LUFFY's number).
- ``ID avg`` / ``OOD avg``: the unweighted mean of the in- / out-of-distribution benchmarks' accuracies.
- With several models, each one's difference to the first (the baseline), per benchmark and per average, with a
  paired bootstrap interval over problems (:func:`echovl.eval.stats.paired_bootstrap`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from .benchmarks import Benchmark
from .stats import paired_bootstrap

__all__ = ["columns", "csv_text", "markdown_table", "problem_scores", "summarize"]

GROUPS = ("ID", "OOD")


def problem_scores(samples: Sequence[dict], benchmark: str, problems: int, k: int) -> np.ndarray:
    """Per-problem mean correctness over the ``k`` samples of each of the first ``problems`` problems."""
    total = np.zeros(problems)
    count = np.zeros(problems, dtype=np.int64)
    for s in samples:
        if s["benchmark"] == benchmark and s["problem_index"] < problems and s["sample"] < k:
            total[s["problem_index"]] += bool(s["correct"])
            count[s["problem_index"]] += 1
    if (count != k).any():
        bad = int(np.flatnonzero(count != k)[0])
        raise ValueError(f"{benchmark}: problem {bad} has {count[bad]} samples, expected {k}")
    return total / k


def columns(benchmarks: Sequence[dict]) -> list[tuple[str, str, list[str]]]:
    """Table columns ``(key, title, benchmarks averaged)``: ID benchmarks, ID avg, OOD benchmarks, OOD avg."""
    out = []
    for group in GROUPS:
        members = [b for b in benchmarks if b["group"] == group]
        out += [(b["name"], b["title"], [b["name"]]) for b in members]
        if members:
            out.append((f"{group} avg", f"{group} avg", [b["name"] for b in members]))
    return out


def summarize(
    benchmarks: Sequence[Benchmark],
    models: Sequence[dict],
    samples: dict[str, list[dict]],
    *,
    ks: dict[str, int],
    problems: dict[str, int],
    resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
    settings: dict | None = None,
) -> dict[str, Any]:
    """``results.json``'s content. ``models`` are ``{"name", "path"}`` in table order; ``samples[name]`` their
    graded samples; ``ks`` / ``problems`` the samples per problem and problems evaluated per benchmark."""
    bench_rows = [
        {
            "name": b.name,
            "title": b.title,
            "group": b.group,
            "k": ks[b.name],
            "problems": problems[b.name],
            "samples": problems[b.name] * ks[b.name],
            "file": str(b.file),
            "content_hash": b.content_hash,
        }
        for b in benchmarks
    ]
    cols = columns(bench_rows)
    scores = {
        m["name"]: {
            b.name: problem_scores(samples[m["name"]], b.name, problems[b.name], ks[b.name]) for b in benchmarks
        }
        for m in models
    }
    model_rows = []
    for m in models:
        row = {"name": m["name"], "path": m["path"], "accuracy": {}}
        for key, _, members in cols:
            row["accuracy"][key] = float(np.mean([scores[m["name"]][b].mean() for b in members]))
        model_rows.append(row)
    differences = []
    if len(models) > 1:
        base = models[0]["name"]
        for m in models[1:]:
            for key, _, members in cols:
                interval = paired_bootstrap(
                    [scores[base][b] for b in members],
                    [scores[m["name"]][b] for b in members],
                    resamples=resamples,
                    confidence=confidence,
                    seed=seed,
                )
                differences.append(
                    {
                        "model": m["name"],
                        "baseline": base,
                        "column": key,
                        "difference": interval.difference,
                        "low": interval.low,
                        "high": interval.high,
                        "confidence": confidence,
                        "excludes_zero": interval.excludes_zero,
                    }
                )
    return {
        "settings": dict(settings or {}, bootstrap_resamples=resamples, confidence=confidence),
        "benchmarks": bench_rows,
        "columns": [{"key": key, "title": title, "benchmarks": members} for key, title, members in cols],
        "models": model_rows,
        "differences": differences,
    }


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _signed(x: float) -> str:
    value = f"{100 * x:+.1f}"
    return value.replace("-", "\u2212")


def markdown_table(results: dict) -> str:
    """The paper's layout: one row per model, one column per benchmark, ID avg and OOD avg (percent); then each
    model's difference to the first, with its interval (``*``: the interval excludes 0)."""
    cols = results["columns"]
    header = "| Model | " + " | ".join(c["title"] for c in cols) + " |"
    rule = "|---|" + "---:|" * len(cols)
    lines = [header, rule]
    for m in results["models"]:
        lines.append(f"| {m['name']} | " + " | ".join(_pct(m["accuracy"][c["key"]]) for c in cols) + " |")
    ks = ", ".join(f"{b['title']} {b['k']}" for b in results["benchmarks"])
    sizes = ", ".join(f"{b['title']} {b['problems']}" for b in results["benchmarks"])
    lines += ["", f"Accuracy in percent, avg@k. Samples per problem: {ks}. Problems: {sizes}."]
    if results["differences"]:
        conf = round(100 * results["settings"]["confidence"])
        base = results["models"][0]["name"]
        lines += [
            "",
            f"Difference to {base} in points, [{conf}% paired bootstrap interval over problems, "
            f"{results['settings']['bootstrap_resamples']} resamples]; * the interval excludes 0:",
            "",
            header,
            rule,
        ]
        by_model: dict[str, dict[str, dict]] = {}
        for d in results["differences"]:
            by_model.setdefault(d["model"], {})[d["column"]] = d
        for name, diffs in by_model.items():
            cells = []
            for c in cols:
                d = diffs[c["key"]]
                star = "*" if d["excludes_zero"] else ""
                cells.append(f"{_signed(d['difference'])}{star} [{_signed(d['low'])}, {_signed(d['high'])}]")
            lines.append(f"| {name} \u2212 {base} | " + " | ".join(cells) + " |")
    for warning in results.get("warnings", []):  # e.g. a paper benchmark missing: the averages are not the paper's
        lines += ["", f"Warning: {warning}"]
    return "\n".join(lines) + "\n"


def csv_text(results: dict) -> str:
    """One row per model and column: accuracy, and for every model but the first its difference and interval."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["model", "column", "group", "k", "problems", "accuracy", "baseline", "difference", "low", "high"])
    benches = {b["name"]: b for b in results["benchmarks"]}
    diffs = {(d["model"], d["column"]): d for d in results["differences"]}
    for m in results["models"]:
        for c in results["columns"]:
            members = [benches[b] for b in c["benchmarks"]]
            group = members[0]["group"]
            k = members[0]["k"] if len(members) == 1 and c["key"] in benches else ""
            problems = sum(b["problems"] for b in members)
            d = diffs.get((m["name"], c["key"]))
            extra = [d["baseline"], f"{d['difference']:.6f}", f"{d['low']:.6f}", f"{d['high']:.6f}"] if d else [""] * 4
            writer.writerow([m["name"], c["key"], group, k, problems, f"{m['accuracy'][c['key']]:.6f}", *extra])
    return buffer.getvalue()
