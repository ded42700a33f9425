"""echovl.outputs: a set of outputs appears all at once or not at all, and leaves no temporary behind."""

import os

import pytest

from echovl.outputs import Outputs, csv_text, write_files


def _names(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_write_files_leaves_every_file_as_it_was_when_one_fails(tmp_path):
    (tmp_path / "a.txt").write_text("old")
    with pytest.raises(TypeError, match="b.txt"):
        write_files({tmp_path / "a.txt": "new", tmp_path / "b.txt": 5})  # the second cannot be written
    assert (tmp_path / "a.txt").read_text() == "old" and not (tmp_path / "b.txt").exists()
    assert _names(tmp_path) == ["a.txt"]  # no temporary file left
    write_files({tmp_path / "a.txt": "new é", tmp_path / "sub" / "b.txt": b"bytes"})
    assert (tmp_path / "a.txt").read_bytes() == "new é".encode() and (
        tmp_path / "sub" / "b.txt"
    ).read_bytes() == b"bytes"
    assert _names(tmp_path) == ["a.txt", "sub", "sub/b.txt"]


def test_nothing_is_visible_before_the_end_and_an_interrupt_leaves_nothing(tmp_path):
    out = tmp_path / "new" / "dir"
    with pytest.raises(KeyboardInterrupt):
        with Outputs() as outputs:
            outputs.write(out / "a.json", "{}")
            handle = outputs.open(out / "b.bin")
            handle.write(b"partial")
            assert not (out / "a.json").exists() and not (out / "b.bin").exists()
            hidden = _names(out)
            assert len(hidden) == 2 and all(name.startswith(".") for name in hidden)  # hidden temporaries
            raise KeyboardInterrupt
    assert _names(tmp_path) == []  # the folders it created are gone too


def test_the_same_destination_twice_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError, match="two outputs would be written to"):
        with Outputs() as outputs:
            outputs.write(tmp_path / "x" / "y" / "a.txt", "1")
            outputs.write(tmp_path / "x" / "y" / "a.txt", "2")
    assert _names(tmp_path) == []


def test_a_folder_replaces_the_old_one_as_a_whole(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with Outputs() as outputs:
            (outputs.folder(tmp_path / "model") / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert _names(tmp_path) == ["model", "model/old.txt"]  # the old folder as it was, the new one gone
    with Outputs() as outputs:
        folder = outputs.folder(tmp_path / "model")
        (folder / "sub").mkdir()
        (folder / "sub" / "new.txt").write_text("new")
        outputs.write(tmp_path / "problems.parquet", b"rows")
    assert _names(tmp_path) == ["model", "model/sub", "model/sub/new.txt", "problems.parquet"]


def test_outputs_get_the_usual_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        with Outputs() as outputs:
            outputs.write(tmp_path / "a.txt", "x")
            outputs.folder(tmp_path / "f")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o755  # not mkdtemp's 0o700


def test_csv_text_cells():
    rows = [{"a": 0.1234567891, "b": True, "c": None}, {"a": float("nan"), "b": False, "c": "x,y"}]
    assert csv_text(rows, ["a", "b", "c", "d"]) == 'a,b,c,d\n0.12345679,1,,\n,0,"x,y",\n'
    assert csv_text(rows[:1]) == "a,b,c\n0.12345679,1,\n"  # the columns of the first row
    assert csv_text([]) == "\n"
