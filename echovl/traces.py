"""Trace files: what EchoRL saw and chose, per sampled group, for the demo and for debugging runs.

A trace folder holds one JSON-lines file per traced training step, ``step_000012.jsonl``, and an
``images/`` folder with each problem image saved once as PNG (named by content hash). Each line is one
group (one prompt and its rollouts)::

    {
      "schema": "echovl.trace/1",
      "source": "easyr1",                 # who wrote it: easyr1, trl, demo, ...
      "train_step": 12,
      "group": "3f1c...",                 # the group's id in the batch (EasyR1 uid)
      "prompt": "...",                    # prompt text as the model saw it (special tokens removed)
      "answer": "...",                    # reference answer
      "image": "images/9a0b....png",      # relative to the trace folder, or null
      "degenerate": true,                 # every rollout verified: all advantages are zero
      "all_wrong": false,
      "hint": "...",                      # optional (UFT): the solution prefix appended to the prompt, or null
      "clip": {                           # null when the group has no clip
        "rollout": 3, "step": 2, "step_entropy": 1.234, "length": 57,
        "token_end": 60, "char_end": 210, # the clip is rollouts[3].text[:210] (tokens [0, 60))
        "weight": 1.0                     # its weight in J_echo (softmax weight under echo.selection: soft)
      },
      "clips": [{...}, ...],              # every clip of the group, "clip" first (several under top_k / soft)
      "rollouts": [
        {
          "text": "...", "reward": 1.0, "accuracy": 1.0, "verified": true, "num_tokens": 120,
          "expert": true,                 # optional (LUFFY): the expert solution, not a rollout of the model
          "steps": [{"tokens": [0, 12], "chars": [0, 40], "text_tokens": 12, "entropy": 0.81}, ...]
        }, ...
      ]
    }

Token spans are ``[start, end)`` over the response tokens; character spans are ``[start, end)`` over
``text``, which is the concatenation of the steps' decoded text (special tokens skipped). ``entropy`` is
the step's mean token entropy over its text tokens (null if it has none).

``hint`` and ``expert`` are optional additions of the same schema version (readers ignore keys they do not
know): a record of a UFT run has ``hint`` (its ``prompt`` is then the prompt without it); a LUFFY run marks its
expert rows with ``"expert": true``. The EchoClip never comes from either.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .clip import EchoClips, step_entropies
from .images import open_image
from .outputs import write_files
from .steps import step_spans

__all__ = [
    "TRACE_SCHEMA",
    "TraceError",
    "TraceWriter",
    "build_group_records",
    "list_trace_files",
    "read_trace_file",
    "select_groups",
]

TRACE_SCHEMA = "echovl.trace/1"
_FILE_PATTERN = re.compile(r"step_(\d+)\.jsonl$")
_REQUIRED = ("schema", "train_step", "group", "prompt", "rollouts", "clip")


class TraceError(ValueError):
    """A trace file or line that cannot be read; the message names the file and line."""


def _rollout_record(tokenizer, ids: list[int], steps: list[int], counts: list[int], means: list[float]) -> dict:
    """Decode one response step by step; steps are contiguous runs of tokens (as step_index makes them)."""
    text, records = "", []
    for step, (start, end) in enumerate(step_spans(steps)):
        piece = tokenizer.decode(ids[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
        count = counts[step] if step < len(counts) else 0
        records.append(
            {
                "tokens": [start, end],
                "chars": [len(text), len(text) + len(piece)],
                "text_tokens": int(count),
                "entropy": round(float(means[step]), 6) if count else None,
            }
        )
        text += piece
    return {"text": text, "num_tokens": sum(1 for s in steps if s >= 0), "steps": records}


def select_groups(group: torch.Tensor, clips: EchoClips, limit: int) -> list[int]:
    """Up to ``limit`` group ids to trace: groups with a clip first, then the others, each in id order."""
    mined = clips.group.tolist()
    others = sorted(set(torch.unique(group).tolist()) - set(mined))
    return (mined + others)[:limit]


def build_group_records(
    tokenizer,
    *,
    train_step: int,
    groups: Sequence[int],
    group: torch.Tensor,
    response_ids: torch.Tensor,
    steps: torch.Tensor,
    text_mask: torch.Tensor,
    entropy: torch.Tensor,
    verified: torch.Tensor,
    clips: EchoClips,
    prompts: Sequence[str],
    answers: Sequence[str],
    rewards: Sequence[float],
    accuracy: Sequence[float],
    images: Sequence[Any] | None = None,
    group_names: Sequence[str] | None = None,
    source: str = "echovl",
    expert: Sequence[bool] | None = None,
    hints: Sequence[str | None] | None = None,
) -> list[tuple[dict, Any]]:
    """One trace record per group in ``groups`` (ids as in ``group``), with its image (or None).

    Per-row inputs are batch-aligned ([B] or [B, T], any order of rows); ``group_names`` optionally gives
    the printable id of each row's group (e.g. EasyR1's uid strings). The image of a record is returned
    beside it for :class:`TraceWriter`, which stores it and fills ``record["image"]``. ``expert`` (LUFFY) marks
    expert rows; ``hints`` (UFT) gives each row's hint text (the record takes its first row's).
    """
    group = group.cpu()
    mean, count = step_entropies(entropy.float().cpu(), steps.cpu(), text_mask.cpu())
    clips_of: dict[int, list[tuple]] = {}
    for g, *clip in zip(
        clips.group.tolist(),
        clips.row.tolist(),
        clips.step.tolist(),
        clips.step_entropy.tolist(),
        clips.length.tolist(),
        clips.weight.tolist(),
    ):
        clips_of.setdefault(g, []).append(clip)
    out = []
    for g in groups:
        rows = (group == g).nonzero().flatten().tolist()
        if not rows:
            raise ValueError(f"group {g} is not in the batch")
        rollouts = []
        for row in rows:
            record = _rollout_record(
                tokenizer, response_ids[row].tolist(), steps[row].tolist(), count[row].tolist(), mean[row].tolist()
            )
            record.update(reward=float(rewards[row]), accuracy=float(accuracy[row]), verified=bool(verified[row]))
            if expert is not None and expert[row]:
                record["expert"] = True
            rollouts.append(record)
        group_clips = []
        for row, step, step_entropy, length, weight in clips_of.get(g, []):
            span = rollouts[rows.index(row)]["steps"][step]  # step_index numbers steps 0, 1, 2, ...
            group_clips.append(
                {
                    "rollout": rows.index(row),
                    "step": step,
                    "step_entropy": round(step_entropy, 6),
                    "length": length,
                    "token_end": span["tokens"][1],
                    "char_end": span["chars"][1],
                    "weight": round(weight, 6),
                }
            )
        flags = [r["verified"] for r in rollouts]
        record = {
            "schema": TRACE_SCHEMA,
            "source": source,
            "train_step": int(train_step),
            "group": str(group_names[rows[0]]) if group_names is not None else str(g),
            "prompt": prompts[rows[0]],
            "answer": answers[rows[0]],
            "image": None,
            "degenerate": all(flags),
            "all_wrong": not any(flags),
            **({"hint": hints[rows[0]]} if hints is not None else {}),
            "clip": group_clips[0] if group_clips else None,
            "clips": group_clips,
            "rollouts": rollouts,
        }
        out.append((record, images[rows[0]] if images is not None else None))
    return out


def _png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    open_image(image).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class TraceWriter:
    """Writes ``step_XXXXXX.jsonl`` files and the images they point to, each step all or none
    (:mod:`echovl.outputs`: the images first, the step file last)."""

    folder: Path

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)

    def write(self, train_step: int, records: Sequence[tuple[dict, Any]]) -> Path:
        """Write one traced step; ``records`` as returned by :func:`build_group_records`."""
        (self.folder / "images").mkdir(parents=True, exist_ok=True)
        files, lines = {}, []
        for record, image in records:
            if image is not None:
                png = _png_bytes(image)
                name = f"images/{hashlib.sha1(png).hexdigest()[:16]}.png"
                if not (self.folder / name).exists():
                    files[self.folder / name] = png
                record = {**record, "image": name}
            lines.append(json.dumps(record, ensure_ascii=False))
        path = self.folder / f"step_{int(train_step):06d}.jsonl"
        files[path] = "\n".join(lines) + "\n"
        write_files(files)
        return path


def list_trace_files(folder: str | Path) -> list[tuple[int, Path]]:
    """``(train_step, path)`` of every trace file in ``folder``, by step."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TraceError(f"{folder}: not a trace folder (no such directory)")
    found = []
    for path in folder.iterdir():
        match = _FILE_PATTERN.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def read_trace_file(path: str | Path) -> Iterator[dict]:
    """Records of one trace file; a malformed line raises :class:`TraceError` naming file and line."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TraceError(f"{path}:{number}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict):
                raise TraceError(f"{path}:{number}: a trace line must be a JSON object")
            missing = [key for key in _REQUIRED if key not in record]
            if missing:
                raise TraceError(f"{path}:{number}: missing key(s) {', '.join(missing)}")
            if record["schema"] != TRACE_SCHEMA:
                raise TraceError(f"{path}:{number}: unknown schema {record['schema']!r} (expected {TRACE_SCHEMA})")
            yield record
