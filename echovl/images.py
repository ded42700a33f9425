"""Opening an image from whatever holds it: a PIL image, file bytes, a path, an array, or the ``datasets`` / parquet
layout ``{"bytes": ..., "path": ...}``. PIL is imported when an image is opened."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

__all__ = ["open_image"]


def open_image(value: Any, base: str | Path | None = None):
    """The PIL image ``value`` holds, decoded (``load``ed), in its own mode; a relative path is read from ``base``.

    Raises ``TypeError`` for a value that holds no image, and PIL's own errors (``OSError``, ...) for data that is
    not one.
    """
    from PIL import Image

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, Path)) and str(value):
        path = Path(value)
        image = Image.open(path if path.is_absolute() or base is None else Path(base) / path)
    elif isinstance(value, Image.Image):
        image = value
    elif hasattr(value, "__array__"):
        image = Image.fromarray(value)
    else:
        raise TypeError(f"cannot open an image of type {type(value).__name__}")
    image.load()
    return image
