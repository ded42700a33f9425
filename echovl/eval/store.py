"""Resumable sample storage.

Generated samples are appended to ``OUT/.cache/<model>/<benchmark>.<key>.jsonl`` as soon as a generation call
returns (flushed and fsynced), where ``key`` hashes the model's files, the benchmark's content, the sampling settings
and the prompt settings (:func:`cache_key`). A killed run loses at most the call in flight; the next run with the
same settings reads the file back and generates only what is missing. A line cut short by the kill is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..outputs import write_files

__all__ = ["SampleStore", "cache_key"]


def cache_key(**parts: Any) -> str:
    """A short stable hash of JSON-serialisable ``parts``."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class SampleStore:
    """The samples of one model on one benchmark under one set of settings (an append-only JSON-lines file).

    Records are dicts with at least ``problem_index`` and ``sample``; :meth:`load` returns the last record stored for
    each ``(problem_index, sample)``. ``describe`` (the key's parts) is written once next to the file, for people.
    """

    def __init__(self, path: str | Path, describe: dict | None = None):
        self.path = Path(path)
        self.describe = describe
        self.skipped_lines = 0

    def load(self) -> dict[tuple[int, int], dict]:
        records: dict[tuple[int, int], dict] = {}
        self.skipped_lines = 0
        if not self.path.exists():
            return records
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                    key = (int(record["problem_index"]), int(record["sample"]))
                except (ValueError, KeyError, TypeError):
                    self.skipped_lines += 1  # a line cut short when a run was killed
                    continue
                records[key] = record
        return records

    def append(self, records: Iterable[dict]) -> None:
        lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.describe is not None:
            meta = self.path.with_suffix(".json")
            if not meta.exists():
                write_files({meta: json.dumps(self.describe, indent=2, sort_keys=True, default=str) + "\n"})
        with open(self.path, "a", encoding="utf-8") as handle:
            if handle.tell() > 0 and not self._ends_with_newline():
                handle.write("\n")  # after a torn last line, start a fresh one
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
