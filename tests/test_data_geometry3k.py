import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from echovl.data.common import (
    EMPTY_ANSWER,
    EMPTY_PROBLEM,
    LETTER_OUTSIDE_CHOICES,
    MALFORMED_JSON,
    MISSING_IMAGE,
    UNDECODABLE_IMAGE,
    DataError,
)
from echovl.data.geometry3k import convert_geometry3k, main, problem_text
from echovl.testing import tiny_image
from tests.data_helpers import REPO, SHARED_DATA, needs, offline_datasets  # noqa: F401 (autouse fixture)

RELEASE_SAMPLES = SHARED_DATA / "geometry3k_raw"
needs_samples = needs(RELEASE_SAMPLES, "the real Geometry3K release samples")


def png_bytes(seed: int) -> bytes:
    buf = io.BytesIO()
    tiny_image(seed).save(buf, format="PNG")
    return buf.getvalue()


def write_problem(split_dir: Path, pid, *, text="Find $x$.", choices=("3", "4", "5", "6"), letter="B", image=True):
    """One problem folder of the original release layout; ``image``: True, bytes, or None (absent)."""
    folder = split_dir / str(pid)
    folder.mkdir(parents=True)
    meta = {"problem_text": "x", "choices": list(choices), "answer": letter, "id": pid, "annotat_text": text}
    (folder / "data.json").write_text(json.dumps(meta), encoding="utf-8")
    if image is True:
        image = png_bytes(int(pid) if str(pid).isdigit() else 0)
    if image is not None:
        (folder / "img_diagram.png").write_bytes(image)
    return folder


def make_release(root: Path, sizes=(("train", 3), ("val", 2), ("test", 2))) -> Path:
    pid = 1
    for split, n in sizes:
        for _ in range(n):
            write_problem(root / split, pid, text=f"Find $x$ in problem {pid}.", letter="ABCD"[pid % 4])
            pid += 1
    return root


BAD_KINDS = {
    MISSING_IMAGE: dict(image=None),
    UNDECODABLE_IMAGE: dict(image=b"this is not a png"),
    "truncated png": dict(image=png_bytes(3)[:200]),
    LETTER_OUTSIDE_CHOICES: dict(letter="E"),
    EMPTY_PROBLEM: dict(text="  <image> "),
    EMPTY_ANSWER: dict(choices=("", "4", "5", "6"), letter="A"),
    MALFORMED_JSON: None,  # written by hand below
    "missing data.json": None,
}
REASON = {"truncated png": UNDECODABLE_IMAGE, "missing data.json": MALFORMED_JSON}


def add_bad(split_dir: Path, pid: int, kind: str) -> Path:
    if kind == MALFORMED_JSON:
        folder = write_problem(split_dir, pid)
        (folder / "data.json").write_text('{"annotat_text": "Find x.", "choices": [', encoding="utf-8")
        return folder
    if kind == "missing data.json":
        folder = write_problem(split_dir, pid)
        (folder / "data.json").unlink()
        return folder
    return write_problem(split_dir, pid, **BAD_KINDS[kind])


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_problem_text_has_one_placeholder_per_image():
    assert problem_text("Find x.", 1) == "<image>Find x."
    assert problem_text("<image>Find x.", 1) == "<image>Find x."
    assert problem_text("Find <image> x.", 1) == "<image>Find x."
    assert problem_text("<image>\nFind x. <image>", 2) == "<image><image>Find x."
    assert problem_text("<image>", 1) == "<image>"


@needs_samples
def test_real_release_samples(tmp_path, capsys):
    assert main(["--source", str(RELEASE_SAMPLES), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr()
    assert "split 'validation' is absent" in printed.err and "split 'test' is absent" in printed.err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["train.parquet"]
    rows = read(tmp_path / "out" / "train.parquet")
    folders = sorted((RELEASE_SAMPLES / "train").iterdir(), key=lambda p: int(p.name))
    assert [r["id"] for r in rows] == [int(p.name) for p in folders]
    for row, folder in zip(rows, folders):
        meta = json.loads((folder / "data.json").read_text())
        assert row["problem"] == "<image>" + meta["annotat_text"].strip()
        assert row["problem"].count("<image>") == len(row["images"]) == 1
        assert row["answer"] == meta["choices"]["ABCD".index(meta["answer"])]
        assert row["choices"] == meta["choices"]
        assert row["images"][0]["bytes"] == (folder / "img_diagram.png").read_bytes()  # stored unchanged
    assert rows[-1]["answer"] == "5 \\sqrt { 3 }"  # problem 15: letter C


def test_full_layout_order_and_determinism(tmp_path):
    release = make_release(tmp_path / "release", sizes=(("train", 4), ("val", 2), ("test", 3)))
    shutil.move(release / "train" / "1", release / "train" / "10")  # folder names sort as numbers: 2, 3, 4, 10
    report = convert_geometry3k(str(release), tmp_path / "a", workers=3)
    assert {s: p.written for s, p in report.parts.items()} == {"train": 4, "validation": 2, "test": 3}
    assert [r["id"] for r in read(tmp_path / "a" / "train.parquet")] == [2, 3, 4, 1]  # id from data.json
    convert_geometry3k(str(release), tmp_path / "b", workers=1)  # the decoding threads do not change the bytes
    for split in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{split}.parquet").read_bytes() == (tmp_path / "b" / f"{split}.parquet").read_bytes()
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "test.parquet",
        "train.parquet",
        "validation.parquet",
    ]


def test_bad_rows_are_skipped_and_reported(tmp_path, capsys):
    release = make_release(tmp_path / "release", sizes=(("train", 2), ("test", 1)))
    for i, kind in enumerate(BAD_KINDS):
        add_bad(release / "train", 100 + i, kind)
    assert main(["--source", str(release), "--out", str(tmp_path / "out"), "--workers", "3"]) == 0
    out = capsys.readouterr().out
    rows = read(tmp_path / "out" / "train.parquet")
    assert [r["id"] for r in rows] == [1, 2]
    listed = [out.index(f"train/{100 + i}: ") for i in range(len(BAD_KINDS))]
    assert listed == sorted(listed)  # bad rows are listed in row order
    expected = {}
    for kind in BAD_KINDS:
        expected[REASON.get(kind, kind)] = expected.get(REASON.get(kind, kind), 0) + 1
    assert re.search(
        rf"train\s+{2 + len(BAD_KINDS)}\s+2\s+{len(BAD_KINDS)}\s+0\n", out
    )  # read written skipped filtered
    for reason, n in expected.items():
        assert f"  {reason}: {n}" in out
    for i, kind in enumerate(BAD_KINDS):
        assert f"train/{100 + i}: {REASON.get(kind, kind)}" in out
    assert "answer 'E', 4 choices (A-D)" in out


@pytest.mark.parametrize("kind", list(BAD_KINDS))
def test_strict_fails_on_each_kind_and_writes_nothing(tmp_path, capsys, kind):
    release = make_release(tmp_path / "release", sizes=(("train", 2), ("val", 1)))
    add_bad(release / "val", 50, kind)
    out = tmp_path / "out"
    assert main(["--source", str(release), "--out", str(out), "--strict"]) == 1
    err = capsys.readouterr().err
    assert f"val/50: {REASON.get(kind, kind)}" in err and "--strict" in err
    assert not out.exists()  # not even the train split, which was fine
    with pytest.raises(DataError):
        convert_geometry3k(str(release), out, strict=True)


def test_strict_failure_keeps_previous_outputs(tmp_path):
    release = make_release(tmp_path / "release")
    convert_geometry3k(str(release), tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    add_bad(release / "test", 99, LETTER_OUTSIDE_CHOICES)
    (release / "train" / "1" / "img_diagram.png").write_bytes(png_bytes(42))  # would change train.parquet
    with pytest.raises(DataError, match="test/99"):
        convert_geometry3k(str(release), tmp_path / "out", strict=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_unusable_sources(tmp_path, monkeypatch):
    import datasets

    with pytest.raises(DataError, match="does not exist"):
        convert_geometry3k(str(tmp_path / "nowhere"), tmp_path / "out")

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(DataError, match="cannot load hub dataset 'data/geo3k' \\(no local file or folder"):
        convert_geometry3k("data/geo3k", tmp_path / "out")  # a mistyped local path looks like a hub name
    release = make_release(tmp_path / "release")
    with pytest.raises(DataError, match="one split of the original release"):
        convert_geometry3k(str(release / "train"), tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no parquet files"):
        convert_geometry3k(str(tmp_path / "empty"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ hub layout


def write_hub_layout(root: Path, rows_by_split: dict[str, list[dict]]) -> Path:
    """Parquet files as the hub stores hiyouga/geometry3k: data/<split>-00000-of-00001.parquet, datasets features."""
    from datasets import Dataset, Features, Image, List, Value

    features = Features(
        {
            "images": List(Image()),
            "problem": Value("string"),
            "answer": Value("string"),
            "id": Value("int64"),
            "choices": List(Value("string")),
            "ground_truth": Value("string"),
        }
    )
    (root / "data").mkdir(parents=True)
    for split, rows in rows_by_split.items():
        Dataset.from_list(rows, features=features).to_parquet(root / "data" / f"{split}-00000-of-00001.parquet")
    return root


def hub_row(pid, problem="<image>Find x.", answer="4", images=1, letter="B", choices=("3", "4", "5", "6")):
    if isinstance(images, int):
        images = [{"bytes": png_bytes(pid + k), "path": None} for k in range(images)]
    return dict(images=images, problem=problem, answer=answer, id=pid, choices=list(choices), ground_truth=letter)


def test_hub_layout_parquet_placeholders_and_bad_rows(tmp_path, capsys):
    rows = [
        hub_row(1),
        hub_row(2, problem="Find x."),  # no placeholder: added
        hub_row(3, problem="Find <image> x."),  # placeholder inside: moved to the front
        hub_row(4, problem="<image>Compare the two.", images=2),  # two images, one placeholder
        hub_row(5, images=0),
        hub_row(6, images=[{"bytes": b"garbage", "path": None}]),
        hub_row(7, problem="<image>"),
        hub_row(8, answer=" "),
        hub_row(9, letter="F"),
    ]
    src = write_hub_layout(tmp_path / "hub", {"train": rows, "test": [hub_row(20)]})
    report = convert_geometry3k(str(src), tmp_path / "out")
    assert "split 'validation' is absent" in capsys.readouterr().err
    out = read(tmp_path / "out" / "train.parquet")
    assert [r["problem"] for r in out] == [
        "<image>Find x.",
        "<image>Find x.",
        "<image>Find x.",
        "<image><image>Compare the two.",
    ]
    assert [len(r["images"]) for r in out] == [1, 1, 1, 2]
    assert out[0]["images"][0]["bytes"] == png_bytes(1)
    assert report.parts["train"].skipped == {
        MISSING_IMAGE: 1,
        UNDECODABLE_IMAGE: 1,
        EMPTY_PROBLEM: 1,
        EMPTY_ANSWER: 1,
        LETTER_OUTSIDE_CHOICES: 1,
    }
    assert [b.where for b in report.bad_rows] == [f"train-00000-of-00001.parquet row {i}" for i in range(4, 9)]
    assert read(tmp_path / "out" / "test.parquet")[0]["id"] == 20


def test_hub_layout_without_id_and_choices(tmp_path):
    import pyarrow as pa

    table = pa.table(
        {
            "images": [[{"bytes": png_bytes(0), "path": "a.png"}], [{"bytes": png_bytes(1), "path": None}]],
            "problem": ["<image>A?", "<image>B?"],
            "answer": ["1", "2"],
        }
    )
    pq.write_table(table, tmp_path / "validation.parquet")
    convert_geometry3k(str(tmp_path / "validation.parquet"), tmp_path / "out")
    rows = read(tmp_path / "out" / "validation.parquet")
    assert [(r["id"], r["choices"], r["images"][0]["path"]) for r in rows] == [(0, [], "a.png"), (1, [], None)]
    pq.write_table(table, tmp_path / "geo.parquet")
    with pytest.raises(DataError, match="cannot tell which split"):
        convert_geometry3k(str(tmp_path / "geo.parquet"), tmp_path / "out2")
    (tmp_path / "x").mkdir()
    pq.write_table(table.drop_columns(["answer"]), tmp_path / "x" / "test.parquet")
    with pytest.raises(DataError, match=r"no column\(s\) \['answer'\]"):
        convert_geometry3k(str(tmp_path / "x"), tmp_path / "out3")


def test_hub_name_goes_through_datasets(tmp_path, monkeypatch):
    """The hub path (datasets streaming) gives the same bytes as the same files read locally."""
    import datasets

    src = write_hub_layout(tmp_path / "hub", {"train": [hub_row(1), hub_row(2, images=0)], "validation": [hub_row(3)]})
    real = datasets.load_dataset
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return real(str(src), *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    report = convert_geometry3k("hiyouga/geometry3k", tmp_path / "hub_out")
    assert calls == [("hiyouga/geometry3k", (None,), {"streaming": True})]  # every split, streamed
    assert report.bad_rows[0].where == "hiyouga/geometry3k [train] row 1"
    convert_geometry3k(str(src), tmp_path / "local_out")
    for split in ("train", "validation"):
        assert (tmp_path / "hub_out" / f"{split}.parquet").read_bytes() == (
            tmp_path / "local_out" / f"{split}.parquet"
        ).read_bytes()


def test_release_and_hub_layout_agree(tmp_path):
    release = make_release(tmp_path / "release", sizes=(("train", 3),))
    rows = []
    for folder in sorted((release / "train").iterdir()):
        meta = json.loads((folder / "data.json").read_text())
        answer = meta["choices"]["ABCD".index(meta["answer"])]
        image = {"bytes": (folder / "img_diagram.png").read_bytes(), "path": None}
        rows.append(
            hub_row(meta["id"], "<image>" + meta["annotat_text"], answer, [image], meta["answer"], meta["choices"])
        )
    convert_geometry3k(str(release), tmp_path / "a")
    convert_geometry3k(str(write_hub_layout(tmp_path / "hub", {"train": rows})), tmp_path / "b")
    drop_path = lambda rs: [{**r, "images": [i["bytes"] for i in r["images"]]} for r in rs]  # noqa: E731
    assert drop_path(read(tmp_path / "a" / "train.parquet")) == drop_path(read(tmp_path / "b" / "train.parquet"))


# ------------------------------------------------------------------------------------------------ consumers


def test_outputs_load_with_datasets(tmp_path):
    from datasets import load_dataset
    from PIL import Image

    release = make_release(tmp_path / "release")
    convert_geometry3k(str(release), tmp_path / "out")
    train = load_dataset("parquet", data_files=str(tmp_path / "out" / "train.parquet"), split="train")
    assert isinstance(train[0]["images"][0], Image.Image) and train[0]["problem"].startswith("<image>")
    test = load_dataset("parquet", data_dir=str(tmp_path / "out"), split="test")  # what RLHFDataset does for OUT@test
    assert len(test) == 2 and set(test.column_names) == {"problem", "answer", "images", "id", "choices"}


@pytest.mark.easyr1
def test_rlhf_dataset_reads_the_output(tmp_path, tiny_vl_dir):
    pytest.importorskip("verl.utils.dataset", reason="EasyR1 (package verl) is not installed")
    from transformers import AutoProcessor, AutoTokenizer
    from verl.utils.dataset import RLHFDataset

    release = make_release(tmp_path / "release")
    convert_geometry3k(str(release), tmp_path / "out")
    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_vl_dir)
    dataset = RLHFDataset(
        str(tmp_path / "out") + "@validation",
        tokenizer,
        processor,
        prompt_key="problem",
        answer_key="answer",
        image_key="images",
        max_prompt_length=512,
        max_pixels=28 * 28 * 16,
        # datasets >= 5 runs even a one-worker filter in a forked pool, which can hang in a test process
        # that already runs torch threads; that filter is EasyR1's, not what this test is about
        filter_overlong_prompts=False,
    )
    assert len(dataset) == 2
    item = dataset[0]
    expected = read(tmp_path / "out" / "validation.parquet")[0]
    assert item["ground_truth"] == expected["answer"] and item["id"] == expected["id"]
    assert item["position_ids"].shape == (4, 512)
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (item["input_ids"] == image_pad).sum() > 0
    text = tokenizer.decode(item["input_ids"][item["attention_mask"].bool()])
    assert text.count("<|vision_start|>") == 1 and expected["problem"].removeprefix("<image>") in text


def test_cli_script_help_and_run(tmp_path):
    """The thin script runs from the repository root and imports this repository's package."""
    script = REPO / "data_prep" / "geometry3k.py"
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--source", "--out", "--strict", "--progress"):
        assert option in help_text
    release = make_release(tmp_path / "release", sizes=(("test", 1),))
    done = subprocess.run(
        [sys.executable, str(script), "--source", str(release), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "test" in done.stdout and (tmp_path / "out" / "test.parquet").exists()
