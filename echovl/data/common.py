"""Shared plumbing of the dataset converters: bad-row reports, atomic deterministic parquet output, sources.

- :class:`TableSource` is how both converters read their input, a local parquet file or folder
  (:func:`parquet_source`, with pyarrow row group by row group) or a hub dataset (:func:`hub_sources`, streamed with
  ``datasets``): the rows in batches, each with where it came from (``file.parquet row 12``, ``owner/name [train]
  row 12``) for the bad-row report.

- :class:`Report` counts rows read / written / skipped (by reason) / filtered (by reason) per part (a split or a
  benchmark), keeps the bad rows with where they were and why, and prints the summary table. With ``strict=True``
  the first bad row raises :class:`DataError` instead.
- :class:`ParquetOutputs` (on :class:`echovl.outputs.Outputs`) streams every output to a hidden temporary file next
  to its destination and renames them all into place only when the whole conversion succeeded; on any error the
  temporaries are removed, so a failed run leaves no partial file (an older output stays untouched).
  :class:`ParquetSink` buffers rows into fixed-size row groups, so the bytes depend only on the rows, not on how the
  input was batched: same input, same bytes.
- Schemas carry the Hugging Face ``datasets`` feature metadata, so ``datasets.load_dataset("parquet", ...)``
  decodes the ``images`` column as images, written in the list form that old and new ``datasets`` read.
- :class:`ConversionSettings` holds the options every converter has (``--strict``, ``--progress``), and
  :func:`conversion_main` runs a converter's command line (:mod:`echovl.cli`).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from ..cli import command_parser, option, progress_option, run_command
from ..inference import is_hub_name as spelled_like_hub_name
from ..outputs import Outputs

__all__ = [
    "EMPTY_ANSWER",
    "EMPTY_PROBLEM",
    "LETTER_OUTSIDE_CHOICES",
    "MALFORMED_JSON",
    "MALFORMED_ROW",
    "MISSING_IMAGE",
    "UNDECODABLE_IMAGE",
    "BadRow",
    "ConversionSettings",
    "DataError",
    "ParquetOutputs",
    "ParquetSink",
    "PartStats",
    "Report",
    "SourceRow",
    "TableSource",
    "cell_text",
    "conversion_main",
    "find_parquet_files",
    "hub_sources",
    "is_hub_name",
    "iter_parquet_batches",
    "open_source",
    "parquet_source",
    "table_schema",
]

# Reasons a row is skipped (or, with --strict, fails the run). Shared so summaries read the same everywhere.
MISSING_IMAGE = "missing image"
UNDECODABLE_IMAGE = "undecodable image"
LETTER_OUTSIDE_CHOICES = "answer letter outside choices"
EMPTY_PROBLEM = "empty problem"
EMPTY_ANSWER = "empty answer"
MALFORMED_JSON = "malformed JSON"
MALFORMED_ROW = "malformed row"

_MAX_LISTED = 20  # bad rows listed one by one in the summary (all of them are counted)


class DataError(ValueError):
    """Input that cannot be converted: an unusable source, or a bad row under ``--strict``."""


@dataclass(frozen=True)
class BadRow:
    part: str
    """The split or benchmark the row belongs to."""
    where: str
    """Which row: a problem folder, ``file.parquet row 12``, ..."""
    reason: str
    """One of the reason constants of this module (what kind of problem)."""
    detail: str = ""
    """Specifics (the exception message, the offending value)."""

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class PartStats:
    """Counts for one output part (split or benchmark). ``read = written + sum(skipped) + sum(filtered)``."""

    name: str
    report: Report = field(repr=False)
    read: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    """Bad rows by reason (errors under ``--strict``)."""
    filtered: Counter = field(default_factory=Counter)
    """Rows dropped on purpose by a documented filter, by reason (never an error)."""

    def skip(self, where: str, reason: str, detail: str = "") -> None:
        """Record a bad row; raise :class:`DataError` instead when the report is strict."""
        bad = BadRow(self.name, where, reason, detail)
        if self.report.strict:
            raise DataError(f"bad row in {self.report.name} [{self.name}] {bad} (--strict: nothing was written)")
        self.skipped[reason] += 1
        self.report.bad_rows.append(bad)

    def drop(self, reason: str, count: int = 1) -> None:
        """Record rows removed by a filter (expected, not an error)."""
        self.filtered[reason] += count


@dataclass
class Report:
    """What a conversion read, wrote and skipped; ``summary()`` is the table the command prints at the end."""

    name: str
    strict: bool = False
    parts: dict[str, PartStats] = field(default_factory=dict)
    bad_rows: list[BadRow] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    def part(self, name: str) -> PartStats:
        if name not in self.parts:
            self.parts[name] = PartStats(name, self)
        return self.parts[name]

    def notice(self, message: str) -> None:
        self.notices.append(message)
        print(f"notice: {message}", file=sys.stderr)

    @property
    def read(self) -> int:
        return sum(p.read for p in self.parts.values())

    @property
    def written(self) -> int:
        return sum(p.written for p in self.parts.values())

    @property
    def skipped(self) -> Counter:
        return sum((p.skipped for p in self.parts.values()), Counter())

    @property
    def filtered(self) -> Counter:
        return sum((p.filtered for p in self.parts.values()), Counter())

    def summary(self) -> str:
        rows = [("part", "read", "written", "skipped", "filtered")]
        for p in self.parts.values():
            rows.append((p.name, p.read, p.written, sum(p.skipped.values()), sum(p.filtered.values())))
        if len(self.parts) > 1:
            rows.append(("total", self.read, self.written, sum(self.skipped.values()), sum(self.filtered.values())))
        widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
        lines = [f"{self.name}: summary"]
        for r in rows:
            lines.append(
                "  "
                + "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
            )
        for title, counter in (("skipped (bad rows) by reason", self.skipped), ("filtered by reason", self.filtered)):
            if counter:
                lines.append(f"{title}:")
                lines += [f"  {reason}: {n}" for reason, n in sorted(counter.items())]
        if self.bad_rows:
            lines.append("bad rows:")
            lines += [f"  [{b.part}] {b}" for b in self.bad_rows[:_MAX_LISTED]]
            if len(self.bad_rows) > _MAX_LISTED:
                lines.append(f"  ... and {len(self.bad_rows) - _MAX_LISTED} more")
        if self.outputs:
            lines.append("wrote: " + ", ".join(str(p) for p in self.outputs))
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- schemas

_KINDS: dict[str, tuple[pa.DataType, Any]] = {
    "string": (pa.string(), {"dtype": "string", "_type": "Value"}),
    "int64": (pa.int64(), {"dtype": "int64", "_type": "Value"}),
    "strings": (pa.list_(pa.string()), [{"dtype": "string", "_type": "Value"}]),
    "images": (pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())])), [{"_type": "Image"}]),
}


def table_schema(columns: dict[str, str]) -> pa.Schema:
    """An arrow schema with ``datasets`` feature metadata; kinds: string, int64, strings, images."""
    fields, features = [], {}
    for name, kind in columns.items():
        arrow_type, feature = _KINDS[kind]
        fields.append(pa.field(name, arrow_type))
        features[name] = feature
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": features}})})


# ------------------------------------------------------------------------------------------------------ output


class ParquetSink:
    """Buffered writer of one parquet file into ``handle``: rows go out in row groups of exactly ``row_group_size``
    rows."""

    def __init__(self, handle, destination: Path, schema: pa.Schema, row_group_size: int):
        self.destination = destination
        self.schema = schema
        self.row_group_size = row_group_size
        self.rows = 0
        self._buffer: list[dict] = []
        self._writer = pq.ParquetWriter(handle, schema, compression="snappy")

    def add(self, row: dict) -> None:
        self._buffer.append(row)
        self.rows += 1
        if len(self._buffer) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.Table.from_pylist(self._buffer, schema=self.schema))
            self._buffer = []

    def close(self) -> None:
        """Write the last row group and the footer (the handle stays open: its :class:`ParquetOutputs` closes it)."""
        if self._writer is not None:
            self._flush()
            self._writer.close()
            self._writer = None

    def abort(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass  # the file is discarded anyway


class ParquetOutputs(Outputs):
    """All-or-nothing parquet files (:class:`echovl.outputs.Outputs`) streamed row group by row group:
    ``with ParquetOutputs(report) as out: sink = out.parquet(path, schema)``. The rows go to hidden temporary files
    next to the destinations (``.<name>.<random>.parquet``); on a clean exit they are completed and renamed into
    place together (and listed in ``report.outputs``); on an exception nothing is left behind.
    """

    def __init__(self, report: Report | None = None):
        super().__init__()
        self.report = report
        self._sinks: list[ParquetSink] = []

    def parquet(self, destination: str | Path, schema: pa.Schema, row_group_size: int = 1024) -> ParquetSink:
        sink = ParquetSink(self.open(destination), Path(destination), schema, row_group_size)
        self._sinks.append(sink)
        return sink

    def commit(self) -> None:
        for sink in self._sinks:
            sink.close()
        super().commit()
        if self.report is not None:
            self.report.outputs += [sink.destination for sink in self._sinks]

    def discard(self) -> None:
        for sink in self._sinks:
            sink.abort()
        super().discard()


# ------------------------------------------------------------------------------------------------------ input


def cell_text(value: Any) -> str:
    """A table cell as a stripped string (numbers are written out); other types (None, bools, lists) give ""."""
    if isinstance(value, bool) or value is None:
        return ""
    if isinstance(value, (int, float)):
        return str(value)
    return value.strip() if isinstance(value, str) else ""


def is_hub_name(source: str) -> bool:
    """True for ``owner/name`` that is not a local path; a missing local-looking path raises :class:`DataError`."""
    if os.path.exists(source):
        return False
    if spelled_like_hub_name(source) and not source.endswith(".parquet"):
        return True
    raise DataError(f"source {source!r} does not exist (and is not a hub dataset name like 'owner/name')")


def find_parquet_files(path: Path) -> list[Path]:
    """The parquet files of a file or folder (recursively, hidden files ignored), sorted."""
    if path.is_file():
        return [path]
    files = sorted(
        p
        for p in path.rglob("*.parquet")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"no parquet files under {path}")
    return files


def iter_parquet_batches(
    files: Iterable[Path], columns: list[str] | None, batch_size: int
) -> Iterator[tuple[Path, int, dict[str, list]]]:
    """Stream ``(file, first_row_index, {column: values})`` batches of at most ``batch_size`` rows.

    Reads one row group at a time (only the wanted columns) and converts one batch at a time to Python, so memory
    is bounded by a row group of the source plus a batch (``ParquetFile.iter_batches`` buffers several times more).
    """
    for file in files:
        try:
            parquet = pq.ParquetFile(file)
        except Exception as exc:
            raise DataError(f"cannot read {file} as parquet: {exc}") from exc
        names = set(parquet.schema_arrow.names)
        wanted = None if columns is None else [c for c in columns if c in names]
        offset = 0
        for group in range(parquet.num_row_groups):
            table = parquet.read_row_group(group, columns=wanted, use_threads=False)
            for batch in table.to_batches(max_chunksize=batch_size):
                yield file, offset, batch.to_pydict()
                offset += batch.num_rows
            del table


class SourceRow(NamedTuple):
    """One row of a :class:`TableSource`."""

    where: str
    """``file.parquet row 12`` (its row in that file) or ``owner/name [split] row 12``."""
    values: dict[str, Any]
    folder: Path | None
    """The folder of a local file (paths in the row are relative to it); None for a hub row."""


@dataclass
class TableSource:
    """The rows of a local parquet file or folder, or of one split of a hub dataset: what both converters read, the
    one way (:func:`open_source`, :func:`hub_sources`, :func:`parquet_source`)."""

    name: str
    columns: list[str]
    """The columns every row has."""
    total: int | None
    """Rows, when known."""
    batches: Callable[[list[str] | None, int], Iterator[list[SourceRow]]]
    """``batches(columns, batch_size)``: the rows, ``batch_size`` at a time, with the ``columns`` asked for that the
    source has (None: all)."""


def parquet_source(files: Sequence[Path], name: str) -> TableSource:
    """Local parquet ``files`` read with pyarrow one row group at a time (:func:`iter_parquet_batches`: memory bounded
    by a row group and a batch, rows named by their file). ``datasets`` would buffer more and lose the file names."""
    try:
        schemas = [pq.read_schema(f) for f in files]
    except Exception as exc:
        raise DataError(f"cannot read {name} as parquet: {exc}") from exc
    columns = [c for c in schemas[0].names if all(c in s.names for s in schemas)]
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)

    def batches(wanted: list[str] | None, batch_size: int) -> Iterator[list[SourceRow]]:
        for file, offset, batch in iter_parquet_batches(files, wanted, batch_size):
            rows = _rows(batch)
            yield [SourceRow(f"{file.name} row {offset + i}", row, file.parent) for i, row in enumerate(rows)]

    return TableSource(name, columns, total, batches)


def hub_sources(name: str, config: str | None = None) -> dict[str, TableSource]:
    """Every split of the hub dataset ``name`` (``config``), streamed with ``datasets`` (Arrow rows: images stay
    bytes); nothing is downloaded before the rows are read."""
    from datasets import load_dataset

    try:
        dataset = load_dataset(name, config, streaming=True)
    except Exception as exc:
        raise DataError(
            f"cannot load hub dataset {name!r} (no local file or folder has that name either): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    return {split: _hub_split(name, split, data) for split, data in dataset.items()}


def _hub_split(name: str, split: str, dataset) -> TableSource:
    columns = dataset.column_names
    if columns is None:  # no metadata: peek at the first row
        columns = list(next(iter(dataset), {}).keys())
    known = dataset.info.splits and split in dataset.info.splits
    total = dataset.info.splits[split].num_examples if known else None

    def batches(wanted: list[str] | None, batch_size: int) -> Iterator[list[SourceRow]]:
        data = dataset if wanted is None else dataset.select_columns([c for c in wanted if c in columns])
        offset = 0
        for table in data.with_format("arrow").iter(batch_size=batch_size):
            rows = table.to_pylist()
            yield [SourceRow(f"{name} [{split}] row {offset + i}", row, None) for i, row in enumerate(rows)]
            offset += len(rows)

    return TableSource(f"{name} [{split}]", columns, total, batches)


def open_source(source: str, *, split: str = "train", config: str | None = None) -> TableSource:
    """``source`` as one table: a hub dataset's ``split`` (:func:`hub_sources`), or every parquet file of a local
    file or folder (:func:`parquet_source`)."""
    if not is_hub_name(source):
        return parquet_source(find_parquet_files(Path(source)), source)
    splits = hub_sources(source, config)
    if split not in splits:
        raise DataError(f"hub dataset {source!r} has no split {split!r} (its splits: {', '.join(splits)})")
    return splits[split]


def _rows(batch: dict[str, list]) -> list[dict]:
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[n] for n in names))]


@dataclass(kw_only=True)
class ConversionSettings:
    """The options every converter has (each adds its own)."""

    strict: bool = option(
        False,
        help="fail (exit status 1, no file written) at the first bad row (the description says what is one); "
        "default: skip bad rows, list them and count them by reason in the summary",
    )
    show_progress: bool | None = progress_option()


def conversion_main(settings: type, convert: Callable[..., Report], argv, *, prog: str, description: str) -> int:
    """A converter's command line: ``convert(settings)``, then its summary (exit status 0) or the error (status 1)."""

    def run(parsed) -> None:
        print(convert(parsed).summary())

    return run_command(command_parser(settings, prog=prog, description=description), run, argv, errors=(DataError,))
