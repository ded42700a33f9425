import pyarrow.parquet as pq
import pytest

from echovl.data.common import (
    EMPTY_ANSWER,
    MISSING_IMAGE,
    DataError,
    ParquetOutputs,
    Report,
    is_hub_name,
    iter_parquet_batches,
    table_schema,
)

SCHEMA = table_schema({"problem": "string", "answer": "string"})


def _rows(n):
    return [{"problem": f"p{i}", "answer": str(i)} for i in range(n)]


def test_outputs_appear_together_only_on_success(tmp_path):
    out = tmp_path / "new" / "dir"
    with ParquetOutputs() as outputs:
        a = outputs.parquet(out / "a.parquet", SCHEMA, row_group_size=4)
        b = outputs.parquet(out / "b.parquet", SCHEMA, row_group_size=4)
        for row in _rows(10):
            a.add(row)
            b.add(row)
        assert not (out / "a.parquet").exists()  # nothing visible until the end
    assert pq.read_table(out / "a.parquet").to_pylist() == _rows(10)
    assert pq.read_table(out / "b.parquet").num_rows == 10
    assert sorted(p.name for p in out.iterdir()) == ["a.parquet", "b.parquet"]  # no temporaries left


def test_failure_leaves_no_file_and_keeps_old_outputs(tmp_path):
    (tmp_path / "a.parquet").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with ParquetOutputs() as outputs:
            sink = outputs.parquet(tmp_path / "a.parquet", SCHEMA)
            outputs.parquet(tmp_path / "b.parquet", SCHEMA).add(_rows(1)[0])
            for row in _rows(3000):
                sink.add(row)
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet"]
    assert (tmp_path / "a.parquet").read_bytes() == b"old"


def test_failure_removes_folders_it_created(tmp_path):
    with pytest.raises(ValueError, match="two outputs would be written"):
        with ParquetOutputs() as outputs:
            outputs.parquet(tmp_path / "x" / "y" / "a.parquet", SCHEMA)
            outputs.parquet(tmp_path / "x" / "y" / "a.parquet", SCHEMA)  # same destination twice: an error
    assert list(tmp_path.iterdir()) == []


def test_row_groups_do_not_depend_on_how_rows_arrive(tmp_path):
    paths = []
    for name in ("one", "two"):
        with ParquetOutputs() as outputs:
            sink = outputs.parquet(tmp_path / f"{name}.parquet", SCHEMA, row_group_size=7)
            for row in _rows(30):
                sink.add(row)
        paths.append(tmp_path / f"{name}.parquet")
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert pq.ParquetFile(paths[0]).metadata.num_row_groups == 5  # 7+7+7+7+2


def test_report_counts_and_strict():
    report = Report("demo")
    part = report.part("train")
    part.read = 5
    part.written = 2
    part.skip("row 1", MISSING_IMAGE, "x.png not found")
    part.skip("row 2", EMPTY_ANSWER)
    part.drop("too long")
    text = report.summary()
    assert "train" in text and "missing image: 1" in text and "too long: 1" in text
    assert "row 1: missing image (x.png not found)" in text
    assert report.skipped == {MISSING_IMAGE: 1, EMPTY_ANSWER: 1}

    strict = Report("demo", strict=True)
    with pytest.raises(DataError, match="row 9: empty answer"):
        strict.part("test").skip("row 9", EMPTY_ANSWER)


def test_schema_carries_datasets_features(tmp_path):
    import io

    from datasets import Image, load_dataset

    from echovl.testing import tiny_image

    buf = io.BytesIO()
    tiny_image(1).save(buf, format="PNG")
    schema = table_schema({"problem": "string", "images": "images", "id": "int64", "choices": "strings"})
    with ParquetOutputs() as outputs:
        outputs.parquet(tmp_path / "train.parquet", schema).add(
            {"problem": "<image>x", "images": [{"bytes": buf.getvalue(), "path": "a.png"}], "id": 3, "choices": ["1"]}
        )
    ds = load_dataset(
        "parquet", data_files=str(tmp_path / "train.parquet"), split="train", cache_dir=str(tmp_path / "c")
    )
    assert isinstance(ds.features["images"].feature, Image)
    assert ds[0]["images"][0].size == (84, 84) and ds[0]["id"] == 3


def test_sources(tmp_path):
    assert is_hub_name("hiyouga/geometry3k")
    with pytest.raises(DataError, match="does not exist"):
        is_hub_name(str(tmp_path / "missing.parquet"))
    with pytest.raises(DataError, match="does not exist"):
        is_hub_name("./nope/nothere")
    with ParquetOutputs() as outputs:
        sink = outputs.parquet(tmp_path / "a.parquet", SCHEMA)
        for row in _rows(10):
            sink.add(row)
    batches = list(iter_parquet_batches([tmp_path / "a.parquet"], ["answer", "nonexistent"], 4))
    assert [(offset, len(b["answer"])) for _, offset, b in batches] == [(0, 4), (4, 4), (8, 2)]
    assert list(batches[0][2]) == ["answer"]
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="bad.parquet"):
        list(iter_parquet_batches([tmp_path / "bad.parquet"], None, 4))


def test_local_files_and_hub_splits_are_read_the_same_way(tmp_path, monkeypatch):
    """One TableSource for both: the same rows, named by file or by split, and a missing split named."""
    import datasets

    from echovl.data.common import open_source

    folder = tmp_path / "hub" / "data"
    with ParquetOutputs() as outputs:
        for split, n in (("train", 5), ("test", 2)):
            sink = outputs.parquet(folder / f"{split}-00000-of-00001.parquet", SCHEMA)
            for row in _rows(n):
                sink.add(row)
    real = datasets.load_dataset
    monkeypatch.setattr(
        datasets, "load_dataset", lambda name, *args, **kwargs: real(str(tmp_path / "hub"), *args, **kwargs)
    )
    local = open_source(str(folder / "train-00000-of-00001.parquet"))
    hub = open_source("owner/name", split="train")
    assert (local.columns, hub.columns, local.total) == (["problem", "answer"], ["problem", "answer"], 5)
    local_rows = [row for batch in local.batches(["answer"], 2) for row in batch]
    hub_rows = [row for batch in hub.batches(["answer"], 2) for row in batch]
    assert [r.values for r in local_rows] == [r.values for r in hub_rows] == [{"answer": str(i)} for i in range(5)]
    assert (local_rows[3].where, local_rows[3].folder) == ("train-00000-of-00001.parquet row 3", folder)
    assert (hub_rows[3].where, hub_rows[3].folder) == ("owner/name [train] row 3", None)
    with pytest.raises(DataError, match="has no split 'validation' \\(its splits: train, test\\)"):
        open_source("owner/name", split="validation")
