"""All-or-nothing output files: what every command (and the trace writer) writes goes through here.

A set of outputs is staged, then committed. Each file is written to a hidden temporary file next to its destination
(``.<stem>.<random><suffix>``: in the same folder, so that the rename is atomic; hidden, so that a loader listing the
folder skips it even if a killed process left it behind); only when every file of the set is complete, flushed and
synced are they renamed into place, in the order they were staged (stage the file readers look for first, e.g.
``results.json``, last). A failure or an interrupt before that leaves every destination as it was, no temporary file
and no folder the set created. Files get the usual permissions (``0o666`` less the umask, folders ``0o777`` less the
umask), not the private ones of :mod:`tempfile`.

- :func:`write_files`: whole files (text, written as UTF-8, or bytes) at once.
- :func:`csv_text` and :func:`figure_png`: the content of the commands' tables and figures.
- :class:`Outputs`: ``with Outputs() as out:`` for outputs made piece by piece: :meth:`Outputs.write` (a whole
  file), :meth:`Outputs.open` (a binary file to stream into, e.g. parquet row groups) and :meth:`Outputs.folder`
  (a folder to fill, which replaces the destination folder).
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["Outputs", "csv_text", "figure_png", "write_files"]


def write_files(files: Mapping[str | Path, str | bytes]) -> None:
    """Write every file of ``files`` (path -> text or bytes), all or none (module docstring)."""
    with Outputs() as outputs:
        for path, content in files.items():
            outputs.write(path, content)


class Outputs:
    """A set of output files and folders committed together on a clean exit of its ``with`` block, discarded on an
    exception (module docstring). :meth:`commit` and :meth:`discard` do the same outside a ``with`` block."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path, BinaryIO | None]] = []
        """``(temporary, destination, open handle or None)`` in staging order."""
        self._created: list[Path] = []
        """Folders this set created."""

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.discard()
            return
        try:
            self.commit()
        except BaseException:
            self.discard()
            raise

    def write(self, destination: str | Path, content: str | bytes) -> None:
        """Stage a whole file: ``content`` as UTF-8 text or bytes."""
        if not isinstance(content, (str, bytes)):
            raise TypeError(f"{destination}: the content must be text or bytes, not {type(content).__name__}")
        self.open(destination).write(content.encode("utf-8") if isinstance(content, str) else content)

    def open(self, destination: str | Path) -> BinaryIO:
        """A binary file to write ``destination``'s bytes into; the set flushes, syncs and closes it on commit."""
        destination = self._claim(destination)
        suffix = destination.suffix or ".tmp"
        fd, tmp = tempfile.mkstemp(prefix=f".{destination.stem}.", suffix=suffix, dir=destination.parent)
        handle = os.fdopen(fd, "wb")
        self._staged.append((Path(tmp), destination, handle))
        return handle

    def folder(self, destination: str | Path) -> Path:
        """An empty folder to fill; on commit it replaces ``destination`` (a folder, or nothing) as a whole."""
        destination = self._claim(destination)
        tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
        self._staged.append((tmp, destination, None))
        return tmp

    def _claim(self, destination: str | Path) -> Path:
        destination = Path(destination)
        if any(staged == destination for _, staged, _ in self._staged):
            raise ValueError(f"two outputs would be written to {destination}")
        missing = [d for d in (destination.parent, *destination.parent.parents) if not d.exists()]
        destination.parent.mkdir(parents=True, exist_ok=True)
        self._created += [d for d in missing if d not in self._created]
        return destination

    def commit(self) -> None:
        """Complete every staged output, then rename them all into place."""
        umask = os.umask(0)
        os.umask(umask)
        for tmp, _, handle in self._staged:
            if handle is not None:
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            os.chmod(tmp, (0o777 if tmp.is_dir() else 0o666) & ~umask)
        replaced = []  # old destination folders, moved aside until every output is in place
        while self._staged:
            tmp, destination, _ = self._staged[0]
            if tmp.is_dir() and destination.is_dir():
                aside = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
                os.replace(destination, aside / destination.name)
                replaced.append(aside)
            os.replace(tmp, destination)
            self._staged.pop(0)
        self._created = []
        for aside in replaced:
            shutil.rmtree(aside, ignore_errors=True)

    def discard(self) -> None:
        """Remove every staged output that is not in place yet, and the folders this set created (when empty)."""
        for tmp, _, handle in self._staged:
            if handle is not None:
                handle.close()
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        self._staged = []
        for folder in sorted(self._created, key=lambda f: len(f.parts), reverse=True):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                pass
        self._created = []


def csv_text(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """CSV with a header (``columns``, default: the first row's keys), one line per row: floats with 8 significant
    digits, booleans as 0 / 1, None and NaN as empty cells, a missing key as an empty cell."""
    columns = list(columns if columns is not None else (rows[0] if rows else []))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
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


def figure_png(figure, *, dpi: int = 120, tight: bool = True) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed afterwards); ``tight``: cropped to what it draws."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None)
    finally:
        plt.close(figure)
    return buffer.getvalue()
