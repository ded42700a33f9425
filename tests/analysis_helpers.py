"""Shared by the analysis tests: small problem files and a backend whose responses are known."""

import csv
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REASONING = ("first {n} alpha beta.", "second gamma.", "third {n} delta epsilon zeta.", "fourth eta.")
"""The scripted rollouts' reasoning steps; the scripted answer is right only while the "third" step is there."""


def write_problems(path: Path, count=3, solution=True, columns=None) -> Path:
    """Problems "Compute n." with answer n, an expert solution, and ``columns`` (name -> function of n)."""
    rows = []
    for n in range(count):
        row = {"problem": f"Compute {n}.", "answer": str(n)}
        if solution:
            row["solution"] = f"<think>\nexpert {n} omega.\nso it is {n}.\n</think>\n\\boxed{{{n}}}"
        row.update({k: v(n) for k, v in (columns or {}).items()})
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def response(n: int, right: bool) -> str:
    steps = "\n".join(step.format(n=n) for step in REASONING)
    return f"<think>\n{steps}\n</think>\n\\boxed{{{n if right else n + 1}}}"


class Scripted:
    """Rollouts: sample j of problem n is right unless ``wrong(n, j)``. Continuations (prompts with a response
    prefix): the right answer when the prefix still holds the "third" step, else a wrong one. Records its calls."""

    name = "scripted"

    def __init__(self, tokenizer, wrong=lambda n, j: j == 1, allow_rollouts=True):
        self.tokenizer, self.processor = tokenizer, None
        self.wrong = wrong
        self.allow_rollouts = allow_rollouts
        self.calls = []

    def generate(self, prompts, sampling, *, seeds=None):
        self.calls.append((list(prompts), sampling, list(seeds)))
        out = []
        for prompt in prompts:
            n = int(re.search(r"Compute (\d+)\.", prompt.chat_text).group(1))
            if prompt.prefix_ids:
                right = "third" in prompt.prefix_text
                out.append([f"\\boxed{{{n if right else n + 7}}}"] * sampling.n)
            else:
                assert self.allow_rollouts, "rollouts were read from a file, none should be generated"
                out.append([response(n, not self.wrong(n, j)) for j in range(sampling.n)])
        return out


def factory(backend):
    return lambda name, model_path, **options: backend


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(cell: str) -> float:
    return float("nan") if cell == "" else float(cell)
