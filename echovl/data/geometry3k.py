"""Geometry3K to EasyR1-ready parquet: ``train.parquet``, ``validation.parquet``, ``test.parquet``.

Sources (``--source``):

- the **original release** folder (InterGPS): ``train/``, ``val/``, ``test/`` with one folder per problem holding
  ``data.json`` and ``img_diagram.png``. ``problem`` is built from ``annotat_text``; ``answer`` is the text of the
  correct choice (``data.json`` stores a letter and a ``choices`` list). Problems are written in id order.
- a local parquet file or folder in the hub layout (columns ``images``, ``problem``, ``answer``; optional ``id``,
  ``choices``, ``ground_truth``): the split comes from the file (or folder) name, ``train*`` / ``validation*`` or
  ``val*`` / ``test*``, as in the hub's ``data/train-00000-of-00001.parquet``.
- a hub dataset name (default ``hiyouga/geometry3k``), streamed with ``datasets.load_dataset`` (needs internet).

Every output row has ``problem`` (``"<image>"`` once per image, then the text; placeholders already in the text are
removed and put back in front, so there is always exactly one per image), ``answer``, ``images`` (a list of
``{"bytes", "path"}``: the original image file's bytes, so the parquet is self-contained), ``id`` and ``choices``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import option, progress_bar
from .common import (
    EMPTY_ANSWER,
    EMPTY_PROBLEM,
    LETTER_OUTSIDE_CHOICES,
    MALFORMED_JSON,
    MALFORMED_ROW,
    MISSING_IMAGE,
    UNDECODABLE_IMAGE,
    ConversionSettings,
    DataError,
    ParquetOutputs,
    PartStats,
    Report,
    TableSource,
    conversion_main,
    find_parquet_files,
    hub_sources,
    is_hub_name,
    parquet_source,
    table_schema,
)

__all__ = [
    "DEFAULT_OUT",
    "DEFAULT_SOURCE",
    "OUTPUT_SPLITS",
    "SCHEMA",
    "Geometry3kSettings",
    "convert_geometry3k",
    "main",
    "problem_text",
]

DEFAULT_SOURCE = "hiyouga/geometry3k"
DEFAULT_OUT = "data/geometry3k"
OUTPUT_SPLITS = ("train", "validation", "test")
SCHEMA = table_schema(
    {"problem": "string", "answer": "string", "images": "images", "id": "int64", "choices": "strings"}
)
IMAGE_TOKEN = "<image>"
_ROW_GROUP = 256  # rows per parquet row group (about 5 MB of diagrams)
_CHUNK = 64  # rows read (and images decoded in parallel) at a time
_SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "test": "test",
}
_SPLIT_NAME = re.compile(r"^(train|validation|valid|val|test)(?:[-_.].*)?$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*")


def problem_text(text: str, num_images: int) -> str:
    """``"<image>" * num_images + text`` with any placeholder already inside ``text`` removed first."""
    return IMAGE_TOKEN * num_images + _PLACEHOLDER.sub(" ", text).strip()


@dataclass(frozen=True)
class _Bad:
    """A row found bad while reading; reported in row order by :func:`_validated`."""

    reason: str
    detail: str = ""


def _decode_error(data: bytes) -> str | None:
    """Decode the image fully (a truncated file fails here, not in training): None if fine, else the error."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


def _image_bytes(data: bytes | None, missing_detail: str) -> _Bad | None:
    if data is None:
        return _Bad(MISSING_IMAGE, missing_detail)
    if not data:
        return _Bad(UNDECODABLE_IMAGE, "empty file")
    return None


def _validated(candidates: Iterator[tuple[str, dict | _Bad]], part: PartStats, pool: Executor) -> Iterator[dict]:
    """Decode every image of a chunk of rows in the thread pool (Pillow releases the GIL), then count, report
    and yield the rows in their original order, so reports and outputs do not depend on the threads."""
    for chunk in _chunks(candidates, _CHUNK):
        images = [img["bytes"] for _, row in chunk if isinstance(row, dict) for img in row["images"]]
        errors = iter(list(pool.map(_decode_error, images)))
        for where, row in chunk:
            part.read += 1
            if isinstance(row, _Bad):
                part.skip(where, row.reason, row.detail)
                continue
            error = next((e for e in [next(errors) for _ in row["images"]] if e), None)
            if error is not None:
                part.skip(where, UNDECODABLE_IMAGE, error)
                continue
            yield row


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ---------------------------------------------------------------------------------------------- original release


def _release_splits(root: Path) -> dict[str, Path]:
    found = {}
    for child in sorted(root.iterdir()):
        split = _SPLIT_ALIASES.get(child.name.lower())
        if split and child.is_dir() and split not in found:
            found[split] = child
    return found


def _id_key(folder: Path):
    return (0, int(folder.name), "") if folder.name.isdigit() else (1, 0, folder.name)


def _release_row(folder: Path) -> dict | _Bad:
    json_path = folder / "data.json"
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"expected an object, got {type(meta).__name__}")
    except FileNotFoundError:
        return _Bad(MALFORMED_JSON, f"{json_path} not found")
    except (ValueError, UnicodeDecodeError) as exc:
        return _Bad(MALFORMED_JSON, f"{json_path}: {exc}")

    raw_id = meta.get("id", folder.name)
    try:
        problem_id = int(raw_id)
    except (TypeError, ValueError):
        return _Bad(MALFORMED_JSON, f"{json_path}: id {raw_id!r} is not an integer")

    text = meta.get("annotat_text")
    if not isinstance(text, str) or not problem_text(text, 0):
        return _Bad(EMPTY_PROBLEM, f"{json_path}: annotat_text is {text!r}")

    choices = meta.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, (str, int, float)) for c in choices):
        return _Bad(MALFORMED_JSON, f"{json_path}: choices must be a list of strings, got {choices!r}")
    choices = [str(c) for c in choices]

    letter = meta.get("answer")
    index = ord(letter.strip().upper()) - ord("A") if isinstance(letter, str) and len(letter.strip()) == 1 else -1
    if not 0 <= index < len(choices):
        valid = f"A-{chr(ord('A') + len(choices) - 1)}" if choices else "no choices"
        return _Bad(LETTER_OUTSIDE_CHOICES, f"answer {letter!r}, {len(choices)} choices ({valid})")
    answer = choices[index].strip()
    if not answer:
        return _Bad(EMPTY_ANSWER, f"choice {letter.strip().upper()} is empty")

    image_path = folder / "img_diagram.png"
    try:
        data = image_path.read_bytes()
    except FileNotFoundError:
        data = None
    bad = _image_bytes(data, f"{image_path} not found")
    if bad is not None:
        return bad
    return {
        "problem": problem_text(text, 1),
        "answer": answer,
        "images": [{"bytes": data, "path": f"{folder.parent.name}/{folder.name}/{image_path.name}"}],
        "id": problem_id,
        "choices": choices,
    }


def _release_rows(split_dir: Path, bar) -> Iterator[tuple[str, dict | _Bad]]:
    folders = sorted((p for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_id_key)
    bar.reset(total=len(folders))
    for folder in folders:
        yield f"{split_dir.name}/{folder.name}", _release_row(folder)
        bar.update()


# ----------------------------------------------------------------------------------------- hub layout (parquet)


def _layout_image(item: Any, base: Path | None) -> dict | _Bad:
    """One entry of an ``images`` list: a ``{"bytes", "path"}`` struct, raw bytes, or a path string."""
    if isinstance(item, (bytes, bytearray)):
        item = {"bytes": bytes(item), "path": None}
    elif isinstance(item, str):
        item = {"bytes": None, "path": item}
    if not isinstance(item, dict):
        return _Bad(MISSING_IMAGE, f"image entry of type {type(item).__name__}")
    data, path = item.get("bytes"), item.get("path")
    if data is None and path:  # an image stored by path: resolve it next to the parquet file
        candidate = Path(path) if Path(path).is_absolute() or base is None else base / path
        if candidate.is_file():
            data = candidate.read_bytes()
    bad = _image_bytes(data, f"no image bytes (path {path!r})")
    if bad is not None:
        return bad
    return {"bytes": bytes(data), "path": path if isinstance(path, str) else None}


def _layout_row(row: dict, index: int, base: Path | None) -> dict | _Bad:
    images = row.get("images")
    if images is None or (isinstance(images, list) and not images):
        return _Bad(MISSING_IMAGE, "no images")
    if not isinstance(images, list):
        images = [images]
    text = row.get("problem")
    if not isinstance(text, str) or not problem_text(text, 0):
        return _Bad(EMPTY_PROBLEM, f"problem is {text!r}")
    answer = row.get("answer")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str) or not answer.strip():
        return _Bad(EMPTY_ANSWER, f"answer is {answer!r}")
    choices = row.get("choices") or []
    if not isinstance(choices, list):
        return _Bad(MALFORMED_ROW, f"choices must be a list, got {choices!r}")
    letter = row.get("ground_truth")
    if choices and isinstance(letter, str) and len(letter.strip()) == 1 and letter.strip().isalpha():
        if not 0 <= ord(letter.strip().upper()) - ord("A") < len(choices):
            return _Bad(LETTER_OUTSIDE_CHOICES, f"ground_truth {letter!r}, {len(choices)} choices")
    raw_id = row.get("id", index)
    try:
        problem_id = int(raw_id if raw_id is not None else index)
    except (TypeError, ValueError):
        return _Bad(MALFORMED_ROW, f"id {raw_id!r} is not an integer")
    stored = []
    for item in images:
        image = _layout_image(item, base)
        if isinstance(image, _Bad):
            return image
        stored.append(image)
    return {
        "problem": problem_text(text, len(stored)),
        "answer": answer.strip(),
        "images": stored,
        "id": problem_id,
        "choices": [str(c) for c in choices],
    }


def _check_columns(columns, where: str) -> None:
    missing = [c for c in ("images", "problem", "answer") if c not in columns]
    if missing:
        raise DataError(
            f"{where} has no column(s) {missing} (found {sorted(columns)}); expected the hub layout "
            "images/problem/answer or the original release folder (train/ val/ test/ with <id>/data.json)"
        )


def _parquet_splits(root: Path) -> dict[str, list[Path]]:
    splits: dict[str, list[Path]] = {}
    unknown = []
    for file in find_parquet_files(root):
        names = [file.stem] + ([*reversed(file.relative_to(root).parent.parts)] if root.is_dir() else [])
        split = next((_SPLIT_ALIASES[m.group(1).lower()] for n in names if (m := _SPLIT_NAME.match(n))), None)
        if split is None:
            unknown.append(file)
        else:
            splits.setdefault(split, []).append(file)
    if unknown:
        raise DataError(
            f"cannot tell which split {', '.join(map(str, unknown))} holds: name the files (or their folders) "
            "train*, validation* / val*, test* (as the hub does: data/train-00000-of-00001.parquet)"
        )
    return splits


def _table_rows(source: TableSource, bar) -> Iterator[tuple[str, dict | _Bad]]:
    """The rows of a hub-layout table (local parquet or a hub split) as output rows or :class:`_Bad`."""
    _check_columns(source.columns, source.name)
    bar.reset(total=source.total)
    index = 0
    for batch in source.batches(None, _CHUNK):
        for row in batch:
            yield row.where, _layout_row(row.values, index, row.folder)
            index += 1
            bar.update()


# --------------------------------------------------------------------------------------------------- conversion


def _source_splits(source: str) -> dict[str, Any]:
    """``{output split: function(progress bar) -> iterator of (where, row or _Bad)}`` for the source's splits."""
    if is_hub_name(source):
        splits = {}
        for name, table in hub_sources(source).items():
            split = _SPLIT_ALIASES.get(name.lower())
            if split is None:
                print(f"notice: ignoring split {name!r} of {source}", file=sys.stderr)
            elif split not in splits:
                splits[split] = functools.partial(_table_rows, table)
        return splits
    root = Path(source)
    if root.is_dir():
        splits = _release_splits(root)
        if any(next(d.glob("*/data.json"), None) is not None for d in splits.values()):
            return {split: functools.partial(_release_rows, folder) for split, folder in splits.items()}
        if next(root.glob("*/data.json"), None) is not None:
            raise DataError(f"{root} looks like one split of the original release: pass its parent folder")
    return {
        split: functools.partial(_table_rows, parquet_source(files, ", ".join(map(str, files))))
        for split, files in _parquet_splits(root).items()
    }


def convert_geometry3k(
    source: str = DEFAULT_SOURCE,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    strict: bool = False,
    workers: int | None = None,
    show_progress: bool | None = None,
) -> Report:
    """Convert ``source`` (release folder, hub-layout parquet, or hub name) into ``out_dir/<split>.parquet``.

    Bad rows are skipped and counted in the returned :class:`Report` (``strict=True``: :class:`DataError` at the
    first one, and nothing is written). All split files are replaced together or not at all. ``workers`` threads
    decode the images (default: the CPU count, at most 8); the output does not depend on it.
    """
    out_dir = Path(out_dir)
    report = Report(f"geometry3k ({source})", strict=strict)
    splits = _source_splits(str(source))
    if not splits:
        raise DataError(f"{source} has none of the splits train / val / test")
    for split in OUTPUT_SPLITS:
        if split not in splits:
            report.notice(f"split {split!r} is absent from {source}: {split}.parquet not written")
    workers = workers or min(8, os.cpu_count() or 1)
    with ParquetOutputs(report) as outputs, ThreadPoolExecutor(workers) as pool:
        for split in OUTPUT_SPLITS:
            if split not in splits:
                continue
            part = report.part(split)
            sink = outputs.parquet(out_dir / f"{split}.parquet", SCHEMA, row_group_size=_ROW_GROUP)
            with progress_bar(desc=f"geometry3k {split}", unit="problems", enable=show_progress) as bar:
                for row in _validated(splits[split](bar), part, pool):
                    sink.add(row)
                    part.written += 1
            if part.written == 0:
                report.notice(f"{split}.parquet has no rows (all {part.read} rows were skipped)")
    return report


# ----------------------------------------------------------------------------------------------------------- CLI


@dataclass(kw_only=True)
class Geometry3kSettings(ConversionSettings):
    """``python data_prep/geometry3k.py``'s options."""

    source: str = option(
        DEFAULT_SOURCE,
        help="what to convert: a hub dataset name (streamed, needs internet); a local parquet file or folder in the "
        "hub layout (columns images, problem, answer; split taken from the file or folder name: train*, "
        "validation*/val*, test*); or the original Geometry3K release folder (train/ val/ test/, one folder per "
        "problem with data.json and img_diagram.png; problem text from annotat_text, answer from the letter and "
        "choices). A split absent from the source is skipped with a notice",
    )
    out: str = option(DEFAULT_OUT, help="output folder, created if needed")
    workers: int | None = option(
        None,
        help="threads that decode (check) the images; default: the CPU count, at most 8. The output is the same",
    )


def main(argv: list[str] | None = None) -> int:
    return conversion_main(
        Geometry3kSettings,
        lambda s: convert_geometry3k(
            s.source, s.out, strict=s.strict, workers=s.workers, show_progress=s.show_progress
        ),
        argv,
        prog="python data_prep/geometry3k.py",
        description=(
            "Convert Geometry3K into EasyR1-ready parquet files OUT/train.parquet, OUT/validation.parquet and "
            "OUT/test.parquet, with columns problem ('<image>' + question), answer (text of the correct choice), "
            "images (the diagram's bytes), id and choices. Load them with EasyR1's RLHFDataset "
            "(data.prompt_key=problem data.answer_key=answer data.image_key=images), e.g. "
            "data.train_files=OUT@train data.val_files=OUT@test. A bad row is a missing or undecodable image, an "
            "answer letter outside the choices, an empty problem or answer, a malformed data.json or row."
        ),
    )
