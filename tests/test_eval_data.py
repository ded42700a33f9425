"""Benchmark files for the evaluation: LUFFY's whole evaluation set through data_prep, and what load_benchmarks
accepts and refuses (each refusal names the file or row)."""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echovl.data.common import DataError
from echovl.data.geometry3k import SCHEMA as GEO3K_SCHEMA
from echovl.data.openr1_math import LUFFY_EVAL_FILES, convert_eval, main
from echovl.eval.benchmarks import EvalError, load_benchmarks
from echovl.testing import tiny_image
from tests.data_helpers import SHARED_DATA, needs

SYSTEM = "Your task is to follow a systematic, thorough reasoning process before providing the final solution."
GPQA_INSTRUCTION = (
    "Answer the following multiple choice question. The last line of your response should be of the following "
    "format: 'ANSWER: $LETTER' (without quotes) where LETTER is one of ABCD. Think step by step before answering.\n\n"
)


def luffy_row(question, answer, data_source):
    """A row of LUFFY's benchmark files (valid.all / valid.arc_c / valid.gpqa / valid.mmlu_pro.parquet)."""
    return {
        "data_source": data_source,
        "prompt": [{"content": SYSTEM, "role": "system"}, {"content": question, "role": "user"}],
        "ability": "math",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": 0, "split": "default"},
    }


def write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def luffy_folder(root: Path, mmlu_pro=True) -> Path:
    """LUFFY's data/ layout in miniature: AIME24/AIME25/AMC repeated (32x there, 3x here), the OOD files with
    letter answers (MMLU-Pro with ten options), and valid.parquet, which the evaluation set does not use."""
    everything = []
    for source, questions in (("aime", 2), ("aime25", 2), ("amc", 2)):
        everything += [luffy_row(f"{source} problem {i}?", str(i), source) for i in range(questions)] * 3
    everything += [luffy_row(f"math problem {i}?", f"\\frac{{{i}}}{{2}}", "math") for i in range(3)]
    write(root / "valid.all.parquet", everything)
    write(root / "valid.arc_c.parquet", [luffy_row("Which?\n\nA) x\nB) y\nC) z\nD) w\n", "C", "arc_c")])
    write(root / "valid.gpqa.parquet", [luffy_row(GPQA_INSTRUCTION + "Which level?\n\nA) 1\nB) 2", "A", "gpqa")])
    if mmlu_pro:
        options = "\n".join(f"{chr(65 + i)}) option {i}" for i in range(10))
        write(root / "valid.mmlu_pro.parquet", [luffy_row(f"Pick one.\n{options}", "J", "mmlu_pro")])
    write(root / "valid.parquet", [luffy_row("aime problem 0?", "0", "aime")] * 8)
    return root


def test_luffy_folder_converts_the_whole_evaluation_set(tmp_path, capsys):
    report = convert_eval(str(luffy_folder(tmp_path / "data")), tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(
        ["all.parquet", "aime.parquet", "aime25.parquet", "amc.parquet", "math.parquet"]
        + ["arc_c.parquet", "gpqa.parquet", "mmlu_pro.parquet"]
    )
    assert report.part("aime").written == 6  # from valid.all.parquet only: valid.parquet is left out
    assert "not valid.parquet" in capsys.readouterr().err
    gpqa = pq.read_table(tmp_path / "out" / "gpqa.parquet").to_pylist()
    assert gpqa == [
        {"problem": GPQA_INSTRUCTION.strip() + "\n\nWhich level?\n\nA) 1\nB) 2", "answer": "A", "data_source": "gpqa"}
    ]
    assert pq.read_table(tmp_path / "out" / "mmlu_pro.parquet").to_pylist()[0]["answer"] == "J"
    benchmarks = load_benchmarks([str(tmp_path / "out")])
    assert [(b.name, b.title, b.group, b.default_k, len(b.problems), b.rows) for b in benchmarks] == [
        ("aime", "AIME24", "ID", 32, 2, 6),
        ("aime25", "AIME25", "ID", 32, 2, 6),
        ("amc", "AMC", "ID", 32, 2, 6),
        ("math", "MATH-500", "ID", 1, 3, 3),
        ("arc_c", "ARC-c", "OOD", 1, 1, 1),
        ("gpqa", "GPQA-diamond", "OOD", 1, 1, 1),
        ("mmlu_pro", "MMLU-Pro", "OOD", 1, 1, 1),
    ]
    assert [p.id for p in benchmarks[0].problems] == ["0", "1"]  # the row of each problem's first copy
    assert [p.rows for p in benchmarks[0].problems] == [3, 3]


def test_luffy_folder_without_mmlu_pro_and_source_collisions(tmp_path, capsys):
    folder = luffy_folder(tmp_path / "data", mmlu_pro=False)
    convert_eval(str(folder), tmp_path / "out")
    assert "valid.mmlu_pro.parquet is missing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "mmlu_pro.parquet").exists()
    # the same data_source from two sources would mix two versions of a benchmark
    with pytest.raises(DataError, match="'aime' is in both"):
        convert_eval([str(folder / "valid.all.parquet"), str(folder / "valid.parquet")], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    # several sources on the command line
    assert (
        main(
            [
                "--eval-source",
                str(folder / "valid.arc_c.parquet"),
                str(folder / "valid.gpqa.parquet"),
                "--out",
                str(tmp_path / "two"),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["all.parquet", "arc_c.parquet", "gpqa.parquet"]
    assert LUFFY_EVAL_FILES[0] == "valid.all.parquet"


LUFFY_VALID = SHARED_DATA / "luffy" / "valid.parquet"


@needs(LUFFY_VALID, "LUFFY's valid.parquet")
def test_real_luffy_file_as_benchmarks(tmp_path):
    convert_eval(str(LUFFY_VALID), tmp_path / "out")
    benchmarks = {b.name: b for b in load_benchmarks([str(tmp_path / "out")], notify=lambda _: None)}
    assert {n: len(b.problems) for n, b in benchmarks.items()} == {
        "aime": 30,
        "amc": 83,
        "math": 500,
        "minerva": 272,
        "olympiad_bench": 675,
    }


def png(seed=0, size=(84, 84)):
    buffer = io.BytesIO()
    tiny_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def geo3k_file(path: Path, rows=3, bad_image_row=None) -> Path:
    records = []
    for i in range(rows):
        data = b"not an image" if i == bad_image_row else png(i)
        records.append(
            {
                "problem": f"<image>Find x in figure {i}.",
                "answer": str(i + 1),
                "images": [{"bytes": data, "path": f"{i}.png"}],
                "id": 100 + i,
                "choices": ["1", "2", "3", "4"],
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records, schema=GEO3K_SCHEMA), path)
    return path


def test_geometry3k_test_split(tmp_path):
    [bench] = load_benchmarks([str(geo3k_file(tmp_path / "geometry3k" / "test.parquet"))])
    assert (bench.name, bench.title, bench.group, bench.multimodal) == ("geometry3k", "Geometry3K", "ID", True)
    assert [p.id for p in bench.problems] == ["100", "101", "102"]
    assert bench.problems[0].images == (png(0),)
    [renamed] = load_benchmarks([f"geo={tmp_path / 'geometry3k' / 'test.parquet'}"])
    assert renamed.name == "geo" and renamed.content_hash != bench.content_hash


def test_content_hash_and_order(tmp_path):
    a = write(tmp_path / "a" / "mine.parquet", [{"problem": "Q1", "answer": "1"}, {"problem": "Q2", "answer": "2"}])
    b = write(tmp_path / "b" / "mine.parquet", [{"problem": "Q1", "answer": "1"}, {"problem": "Q2", "answer": "3"}])
    write(tmp_path / "c" / "math.parquet", [{"problem": "Q", "answer": "1"}])
    [first], [second] = load_benchmarks([str(a)]), load_benchmarks([str(b)])
    assert first.content_hash != second.content_hash  # an answer changed
    assert load_benchmarks([str(a)])[0].content_hash == first.content_hash
    # the paper's benchmarks first, in its column order, then the others as given
    order = [x.name for x in load_benchmarks([str(a), str(tmp_path / "c" / "math.parquet")])]
    assert order == ["math", "mine"]
    ood = load_benchmarks([str(a), str(tmp_path / "c" / "math.parquet")], ood=["mine"])
    assert [(x.name, x.group) for x in ood] == [("math", "ID"), ("mine", "OOD")]


def test_all_parquet_is_skipped_in_a_folder(tmp_path):
    write(tmp_path / "math.parquet", [luffy_row("Q", "1", "math")])
    convert_eval(str(tmp_path / "math.parquet"), tmp_path / "eval")
    notes = []
    assert [b.name for b in load_benchmarks([str(tmp_path / "eval")], notify=notes.append)] == ["math"]
    assert "all.parquet skipped" in notes[0]


def _not_parquet(d: Path) -> Path:
    (d / "x.parquet").write_text("not parquet")
    return d / "x.parquet"


def _empty_folder(d: Path) -> Path:
    (d / "empty_folder").mkdir()
    return d / "empty_folder"


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: d / "missing.parquet", "no such file or folder"),
        (_not_parquet, "cannot read benchmark file .*x.parquet"),
        (lambda d: _empty(d), "is empty"),
        (lambda d: write(d / "c.parquet", [{"question": "Q", "answer": "1"}]), "has no column 'problem'"),
        (
            lambda d: write(d / "r.parquet", [{"problem": "Q", "answer": "1"}, {"problem": " ", "answer": "2"}]),
            r"r.parquet row 1: empty 'problem'",
        ),
        (lambda d: write(d / "a.parquet", [{"problem": "Q", "answer": None}]), r"a.parquet row 0: empty 'answer'"),
        (lambda d: geo3k_file(d / "g" / "test.parquet", bad_image_row=1), r"test.parquet row 1: unreadable image"),
        (lambda d: _placeholders(d), r"p.parquet row 0: 2 <image> placeholder\(s\) .* for 1 image"),
        (lambda d: _two_files(d), "'math' is in both"),
        (_empty_folder, "holds no parquet files"),
    ],
)
def test_bad_benchmark_input(tmp_path, make, message):
    path = make(tmp_path)
    specs = path if isinstance(path, list) else [str(path)]
    with pytest.raises(EvalError, match=message):
        load_benchmarks(specs)


def _empty(d: Path) -> Path:
    schema = pa.schema([("problem", pa.string()), ("answer", pa.string())])
    pq.write_table(pa.Table.from_pylist([], schema=schema), d / "e.parquet")
    return d / "e.parquet"


def _placeholders(d: Path) -> Path:
    rows = [{"problem": "<image><image>Find x.", "answer": "1", "images": [{"bytes": png(), "path": None}]}]
    pq.write_table(pa.Table.from_pylist(rows, schema=GEO3K_SCHEMA.remove(4).remove(3)), d / "p.parquet")
    return d / "p.parquet"


def _two_files(d: Path) -> list[str]:
    write(d / "one" / "math.parquet", [{"problem": "Q", "answer": "1"}])
    write(d / "two" / "math.parquet", [{"problem": "Q", "answer": "1"}])
    return [str(d / "one" / "math.parquet"), str(d / "two" / "math.parquet")]
