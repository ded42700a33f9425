"""Benchmark files: which benchmarks a parquet file holds, their problems, and what the paper's table calls them.

A benchmark file is a parquet file with a problem column (``problem``, with one ``<image>`` placeholder per image),
an answer column (``answer``) and optionally ``data_source`` (one benchmark per value: the files of
``data_prep/openr1_math.py`` and LUFFY's own), ``images`` (a list of images: ``{"bytes", "path"}`` as
``data_prep/geometry3k.py`` writes them, raw bytes, or paths relative to the file) and ``id``. Without
``data_source`` the whole file is one benchmark, named after the file (after its folder for a split file such as
``geometry3k/test.parquet``) or by ``NAME=FILE``.

Rows that repeat a problem (LUFFY repeats AIME and AMC 8 or 32 times to average over samples) are one problem here:
the evaluation draws ``k`` samples per problem instead. A problem's ``id`` is the file's ``id`` value, else the row
number of its first row in the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.common import cell_text
from ..inference import InferenceError

__all__ = [
    "KNOWN_BENCHMARKS",
    "Benchmark",
    "BenchmarkInfo",
    "EvalError",
    "Problem",
    "benchmark_info",
    "load_benchmarks",
]


class EvalError(InferenceError):
    """Bad input to the evaluation (a file, a row, a model folder, an option): the message says which and why."""


@dataclass(frozen=True)
class BenchmarkInfo:
    name: str
    """The ``data_source`` value (or file name) that identifies the benchmark."""
    title: str
    """Its column title in the table."""
    group: str
    """``ID`` (in-distribution) or ``OOD`` (out-of-distribution): which average it enters."""
    k: int
    """Samples per problem by default (avg@k)."""


_KNOWN = [
    # LUFFY's in-distribution math benchmarks; avg@32 on the three small ones, as LUFFY's valid.all.parquet does
    BenchmarkInfo("aime", "AIME24", "ID", 32),
    BenchmarkInfo("aime25", "AIME25", "ID", 32),
    BenchmarkInfo("amc", "AMC", "ID", 32),
    BenchmarkInfo("math", "MATH-500", "ID", 1),
    BenchmarkInfo("minerva", "Minerva", "ID", 1),
    BenchmarkInfo("olympiad_bench", "Olympiad", "ID", 1),
    # LUFFY's out-of-distribution benchmarks (letter answers)
    BenchmarkInfo("arc_c", "ARC-c", "OOD", 1),
    BenchmarkInfo("gpqa", "GPQA-diamond", "OOD", 1),
    BenchmarkInfo("mmlu_pro", "MMLU-Pro", "OOD", 1),
    # the vision-language benchmark
    BenchmarkInfo("geometry3k", "Geometry3K", "ID", 1),
]
KNOWN_BENCHMARKS: dict[str, BenchmarkInfo] = {info.name: info for info in _KNOWN}
"""The paper's benchmarks in its column order; others come after them, in the order given."""
_ALIASES = {"aime24": "aime", "gpqa_diamond": "gpqa", "mmlupro": "mmlu_pro", "geo3k": "geometry3k"}


def _canonical(name: str) -> str:
    key = name.lower().replace("-", "_")
    return _ALIASES.get(key, key)


def benchmark_info(name: str) -> BenchmarkInfo:
    """What the table calls ``name`` (a known benchmark, or an in-distribution one titled by its name, k = 1)."""
    key = _canonical(name)
    if key in KNOWN_BENCHMARKS:
        known = KNOWN_BENCHMARKS[key]
        return BenchmarkInfo(name, known.title, known.group, known.k)
    return BenchmarkInfo(name, name, "ID", 1)


@dataclass(frozen=True)
class Problem:
    index: int
    """Position in its benchmark (distinct problems in the order of their first row)."""
    id: str
    """The file's ``id`` value, else the row number of the problem's first row."""
    problem: str
    answer: str
    images: tuple[bytes, ...] | None
    """Image file contents, or None when the file has no image column."""
    rows: int = 1
    """How many rows of the file hold this problem."""
    row: int = 0
    """Row number of its first row in the file (for error messages)."""


@dataclass
class Benchmark:
    name: str
    title: str
    group: str
    default_k: int
    file: Path
    problems: list[Problem]
    rows: int
    """Rows of the file (repeats included)."""
    multimodal: bool
    """True when the file has an image column: prompts then go through the processor, as EasyR1 does."""
    content_hash: str = field(default="")
    """sha256 of the benchmark's name, problems, answers and images, in order: the resume key."""

    def __post_init__(self) -> None:
        if not self.content_hash:
            digest = hashlib.sha256(self.name.encode())
            for p in self.problems:
                images = [hashlib.sha256(b).hexdigest() for b in p.images] if p.images is not None else None
                digest.update(json.dumps([p.id, p.problem, p.answer, images]).encode())
            self.content_hash = digest.hexdigest()

    def limited(self, limit: int | None) -> list[Problem]:
        """The first ``limit`` problems (all of them for None)."""
        return self.problems if limit is None else self.problems[:limit]


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _split_spec(spec: str) -> tuple[str | None, Path]:
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not _NAME.match(name):
            raise EvalError(f"benchmark {spec!r}: a name before '=' may only hold letters, digits, '_', '.', '-'")
        return name, Path(path)
    return None, Path(spec)


def _files(path: Path, notify: Callable[[str], None]) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.glob("*.parquet") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise EvalError(f"benchmark folder {path} holds no parquet files")
    if len(files) > 1 and any(p.name == "all.parquet" for p in files):
        notify(f"{path}: all.parquet skipped (the union of the other files, written for EasyR1's validation)")
        files = [p for p in files if p.name != "all.parquet"]
    return files


_SPLITS = {"train", "validation", "valid", "val", "test"}


def _file_name(file: Path) -> str:
    """A benchmark's name from its file: the stem, or the folder's name for a split file (geometry3k/test.parquet)."""
    return file.parent.name if file.stem.lower() in _SPLITS and file.parent.name else file.stem


def _image_bytes(value: Any, base: Path) -> bytes:
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        path = Path(value) if Path(value).is_absolute() else base / value
        return path.read_bytes()
    raise ValueError(f"an image is {type(value).__name__}, expected {{'bytes', 'path'}}, bytes or a path")


def _check_image(data: bytes) -> None:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()


def _read_file(
    file: Path, name: str | None, keys: tuple[str, str, str], notify: Callable[[str], None]
) -> list[Benchmark]:
    import pyarrow.parquet as pq

    prompt_key, answer_key, image_key = keys
    try:
        parquet = pq.ParquetFile(file)
    except Exception as exc:
        raise EvalError(f"cannot read benchmark file {file} as parquet: {exc}") from exc
    columns = parquet.schema_arrow.names
    missing = [c for c in (prompt_key, answer_key) if c not in columns]
    if missing:
        raise EvalError(
            f"benchmark file {file} has no column {', '.join(map(repr, missing))} (columns: {', '.join(columns)}; "
            "choose others with --prompt-key / --answer-key)"
        )
    if parquet.metadata.num_rows == 0:
        raise EvalError(f"benchmark file {file} is empty (no rows)")
    wanted = [c for c in (prompt_key, answer_key, "data_source", image_key, "id") if c in columns]
    table = parquet.read(columns=wanted).to_pydict()
    multimodal = image_key in columns
    sources = table.get("data_source")
    if sources is not None and name is not None and len(set(sources)) > 1:
        raise EvalError(f"{name}={file}: the file holds several benchmarks (data_source), so it cannot be renamed")
    grouped: dict[str, dict[tuple, Problem]] = {}
    counts: dict[str, int] = {}
    for row in range(parquet.metadata.num_rows):
        where = f"{file} row {row}"
        problem, answer = cell_text(table[prompt_key][row]), cell_text(table[answer_key][row])
        if not problem:
            raise EvalError(f"{where}: empty {prompt_key!r}")
        if not answer:
            raise EvalError(f"{where}: empty {answer_key!r} (got {table[answer_key][row]!r})")
        bench = name or (cell_text(sources[row]) if sources is not None else "") or _file_name(file)
        if sources is not None and not cell_text(sources[row]):
            raise EvalError(f"{where}: empty 'data_source'")
        images = None
        if multimodal:
            values = table[image_key][row] or []
            try:
                images = tuple(_image_bytes(v, file.parent) for v in values)
                for data in images:
                    _check_image(data)
            except Exception as exc:
                raise EvalError(f"{where}: unreadable image: {type(exc).__name__}: {exc}") from exc
            if problem.count("<image>") != len(images):
                raise EvalError(
                    f"{where}: {problem.count('<image>')} <image> placeholder(s) in {prompt_key!r} for {len(images)} "
                    "image(s); the prompt needs one per image"
                )
        key = (problem, answer, images)
        problems = grouped.setdefault(bench, {})
        counts[bench] = counts.get(bench, 0) + 1
        if key in problems:
            old = problems[key]
            problems[key] = Problem(old.index, old.id, old.problem, old.answer, old.images, old.rows + 1, old.row)
            continue
        pid = cell_text(table["id"][row]) if "id" in table else ""
        problems[key] = Problem(len(problems), pid or str(row), problem, answer, images, 1, row)
    benchmarks = []
    for bench, problems in grouped.items():
        info = benchmark_info(bench)
        items = list(problems.values())
        if len(items) < counts[bench]:
            notify(
                f"{bench}: {counts[bench]} rows of {file.name} hold {len(items)} distinct problems (repeats merged)"
            )
        benchmarks.append(Benchmark(bench, info.title, info.group, info.k, file, items, counts[bench], multimodal))
    return benchmarks


def _stderr(message: str) -> None:
    print(f"notice: {message}", file=sys.stderr)


def load_benchmarks(
    specs: Sequence[str],
    *,
    prompt_key: str = "problem",
    answer_key: str = "answer",
    image_key: str = "images",
    ood: Sequence[str] | None = None,
    notify: Callable[[str], None] = _stderr,
) -> list[Benchmark]:
    """Read every benchmark of ``specs`` (files, folders of parquet files, or ``NAME=FILE``), fully validated.

    ``ood`` names the out-of-distribution benchmarks (default: the paper's, ARC-c, GPQA-diamond, MMLU-Pro); every
    other benchmark is in-distribution. Benchmarks come in the paper's column order, then the others in the order
    given. Raises :class:`EvalError` for a missing, unreadable or empty file, a missing column, an empty problem or
    answer, an unreadable image, or a benchmark found in two files.
    """
    if not specs:
        raise EvalError("no benchmark files given")
    found: dict[str, Benchmark] = {}
    for spec in specs:
        name, path = _split_spec(str(spec))
        if not path.exists():
            raise EvalError(f"benchmark {spec}: no such file or folder")
        if name is not None and not path.is_file():
            raise EvalError(f"{spec}: NAME=FILE names one file, and {path} is a folder")
        for file in _files(path, notify):
            for bench in _read_file(file, name, (prompt_key, answer_key, image_key), notify):
                if bench.name in found:
                    raise EvalError(
                        f"benchmark {bench.name!r} is in both {found[bench.name].file} and {bench.file}: "
                        "pass one of them (or rename one with NAME=FILE)"
                    )
                found[bench.name] = bench
    if ood is not None:
        unknown = sorted(set(ood) - set(found))
        if unknown:
            raise EvalError(
                f"--ood names {', '.join(unknown)}, which are not among the benchmarks ({', '.join(found)})"
            )
        for bench in found.values():
            bench.group = "OOD" if bench.name in ood else "ID"
    known = {name: i for i, name in enumerate(KNOWN_BENCHMARKS)}
    given = {name: i for i, name in enumerate(found)}
    return [found[n] for n in sorted(found, key=lambda n: (known.get(_canonical(n), len(known)), given[n]))]
