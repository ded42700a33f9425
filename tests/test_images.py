"""echovl.images.open_image: every holder of an image the project meets opens to the same picture."""

import io

import numpy as np
import pytest

from echovl.images import open_image
from echovl.testing import tiny_image


def test_every_holder_opens_to_the_same_pixels(tmp_path):
    picture = tiny_image(3)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    data = buffer.getvalue()
    (tmp_path / "a.png").write_bytes(data)
    holders = [
        picture,
        data,
        bytearray(data),
        tmp_path / "a.png",
        str(tmp_path / "a.png"),
        {"bytes": data, "path": None},
        {"bytes": None, "path": str(tmp_path / "a.png")},
        np.asarray(picture),
    ]
    for holder in holders:
        assert open_image(holder).convert("RGB").tobytes() == picture.convert("RGB").tobytes(), type(holder)
    assert open_image("a.png", base=tmp_path).size == picture.size  # a relative path, read from base


def test_what_holds_no_image_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="cannot open an image of type int"):
        open_image(3)
    with pytest.raises(OSError):
        open_image(b"not an image")
    with pytest.raises(OSError):
        open_image(tmp_path / "missing.png")
