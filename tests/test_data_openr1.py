import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echovl.data.common import EMPTY_ANSWER, EMPTY_PROBLEM, MALFORMED_ROW, DataError
from echovl.data.openr1_math import (
    DUPLICATE,
    EMPTY_DATA_SOURCE,
    EMPTY_SOLUTION,
    NO_VERIFIED,
    NOT_A_LETTER,
    TOO_LONG,
    convert_eval,
    convert_openr1,
    main,
    question_text,
)
from tests.data_helpers import REPO, SHARED_DATA, needs, offline_datasets  # noqa: F401 (autouse fixture)

LUFFY_VALID = SHARED_DATA / "luffy" / "valid.parquet"
needs_valid = needs(LUFFY_VALID, "LUFFY's valid.parquet")
SYSTEM = "Your task is to follow a systematic, thorough reasoning process before providing the final solution."
LONG = "the angle of the triangle is equal to the sum of x and y " * 20  # far over MAX_TOKENS tiny-tokenizer tokens
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from echovl.testing import build_tiny_tokenizer

    path = tmp_path_factory.mktemp("tiny_tokenizer")
    build_tiny_tokenizer(vision_tokens=False).save_pretrained(path)
    return path


def raw_row(problem="What is 1+1?", answer="2", gens=(("<think>\nso 2\n</think>\n\\boxed{2}", True, True),)):
    """A row of raw OpenR1-Math-220k; ``gens`` = (text, correctness_math_verify, is_reasoning_complete)."""
    return {
        "problem": problem,
        "solution": "reference",
        "answer": answer,
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": "u",
        "is_reasoning_complete": [g[2] for g in gens],
        "generations": [g[0] for g in gens],
        "correctness_math_verify": [g[1] for g in gens],
        "correctness_llama": [None for _ in gens],
        "finish_reasons": [None for _ in gens],
        "correctness_count": sum(bool(g[1]) for g in gens),
        "messages": [{"content": problem, "role": "user"}],
    }


def verl_row(question, answer, solution="<think>\nok\n</think>\n\\boxed{1}", data_source="", index=0):
    """A row in LUFFY's verl format (the layout of Elliott/Openr1-Math-46k-8192 and of valid.parquet)."""
    row = {
        "data_source": data_source,
        "prompt": [{"content": SYSTEM, "role": "system"}, {"content": question, "role": "user"}],
        "ability": "math",
        "reward_model": {"ground_truth": answer, "style": "rule"},
        "extra_info": {"index": index, "split": "default"},
    }
    if solution is not None:
        row["target"] = [{"content": solution, "role": "assistant"}]
    return row


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=50)
    return path


def read(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


# ------------------------------------------------------------------------------------------------ raw 220k filter


def test_raw_filter_rules(tmp_path, tokenizer_dir):
    rows = [
        raw_row(
            "first verified one is kept", "1", [("wrong", False, True), ("good A", True, True), ("good B", True, True)]
        ),
        raw_row("incomplete is not kept", "2", [("cut", True, False), ("good", True, True)]),
        raw_row("too long then short", "3", [(LONG, True, True), ("short", True, True)]),
        raw_row("all too long", "4", [(LONG, True, True), (LONG + "x", True, True)]),
        raw_row("none verified", "5", [("a", False, True), ("b", None, True), ("c", True, None)]),
        raw_row("empty generation is no trace", "6", [("  ", True, True), ("real", True, True)]),
        raw_row("", "7"),
        raw_row("no answer", " "),
        {**raw_row("lists of different lengths", "9"), "is_reasoning_complete": [True, True]},
        {**raw_row("flags missing", "10"), "correctness_math_verify": None},
    ]
    src = write_rows(tmp_path / "raw" / "train-00000-of-00001.parquet", rows)
    report = convert_openr1(str(src), tmp_path / "out", tokenizer=str(tokenizer_dir), max_tokens=MAX_TOKENS)
    out = read(tmp_path / "out" / "train.parquet")
    assert [(r["problem"], r["answer"], r["solution"]) for r in out] == [
        ("first verified one is kept", "1", "good A"),
        ("incomplete is not kept", "2", "good"),
        ("too long then short", "3", "short"),
        ("empty generation is no trace", "6", "real"),
    ]
    part = report.parts["train"]
    assert (part.read, part.written) == (10, 4)
    assert part.filtered == {TOO_LONG: 1, NO_VERIFIED: 1}
    assert part.skipped == {EMPTY_PROBLEM: 1, EMPTY_ANSWER: 1, MALFORMED_ROW: 2}
    assert [b.where for b in report.bad_rows] == [f"train-00000-of-00001.parquet row {i}" for i in (6, 7, 8, 9)]
    assert report.bad_rows[2].detail.endswith("is_reasoning_complete: 1/1/2")


def reference_filter(rows, tokenizer, max_tokens):
    """LUFFY's recipe as a plain loop: verified and complete, then short enough, then the first one."""
    out = []
    for row in rows:
        gens = [
            g
            for g, v, c in zip(row["generations"], row["correctness_math_verify"], row["is_reasoning_complete"])
            if v is True and c is True and g.strip()
        ]
        gens = [g for g in gens if len(tokenizer(g, add_special_tokens=False)["input_ids"]) <= max_tokens]
        if gens:
            out.append({"problem": row["problem"], "answer": row["answer"], "solution": gens[0]})
    return out


def test_streamed_filter_matches_reference_for_any_batch_size(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    rng = random.Random(0)
    words = "the angle side x y so we have 2 + 3 = 5 . \n".split(" ")
    rows = []
    for i in range(150):
        gens = [
            (
                " ".join(rng.choice(words) for _ in range(rng.randint(1, 60))),
                rng.choice([True, True, False, None]),
                rng.random() < 0.8,
            )
            for _ in range(rng.randint(1, 4))
        ]
        rows.append(raw_row(f"problem {i}", str(i), gens))
    src = write_rows(tmp_path / "raw.parquet", rows)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    expected = reference_filter(rows, tokenizer, MAX_TOKENS)
    assert 30 < len(expected) < 140  # the fixture exercises both outcomes
    outputs = []
    for batch_size in (1, 7, 1000):
        out = tmp_path / f"out{batch_size}"
        convert_openr1(str(src), out, tokenizer=tokenizer, max_tokens=MAX_TOKENS, batch_size=batch_size)
        assert read(out / "train.parquet") == expected
        outputs.append((out / "train.parquet").read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]  # same bytes, whatever the batch size


def test_strict_only_fails_on_bad_rows_not_on_filtered_ones(tmp_path, tokenizer_dir):
    rows = [
        raw_row("ok", "1"),
        raw_row("none verified", "2", [("a", False, True)]),
        raw_row("long", "3", [(LONG, True, True)]),
    ]
    src = write_rows(tmp_path / "raw.parquet", rows)
    report = convert_openr1(
        str(src), tmp_path / "out", tokenizer=str(tokenizer_dir), max_tokens=MAX_TOKENS, strict=True
    )
    assert report.written == 1 and sum(report.filtered.values()) == 2
    write_rows(tmp_path / "raw.parquet", rows + [raw_row("", "4")])
    with pytest.raises(DataError, match=r"raw.parquet row 3: empty problem"):
        convert_openr1(str(src), tmp_path / "out2", tokenizer=str(tokenizer_dir), max_tokens=MAX_TOKENS, strict=True)
    assert not (tmp_path / "out2").exists()


def test_raw_source_needs_a_tokenizer(tmp_path):
    src = write_rows(tmp_path / "raw.parquet", [raw_row()])
    with pytest.raises(DataError, match="cannot load tokenizer"):
        convert_openr1(str(src), tmp_path / "out", tokenizer=str(tmp_path / "no_tokenizer_here"))


# --------------------------------------------------------------------------------------------- LUFFY verl format


def test_question_text():
    assert (
        question_text([{"role": "system", "content": SYSTEM}, {"role": "user", "content": " Find x.\n"}]) == "Find x."
    )
    suffixed = "Find x. Let's think step by step and output the final answer within \\boxed{}."
    assert question_text([{"role": "user", "content": suffixed}]) == "Find x."
    assert question_text("Find y.") == "Find y."
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    assert question_text(turns) == "c"
    with pytest.raises(ValueError, match="no user message"):
        question_text([{"role": "system", "content": SYSTEM}])
    with pytest.raises(ValueError):
        question_text(None)


def test_luffy_train_format(tmp_path):
    rows = [
        verl_row("Find x.", "3", "<think>\nx is 3\n</think>\n\\boxed{3}"),
        verl_row("What is 2+2? Let's think step by step and output the final answer within \\boxed{}.", "4"),
        verl_row("  ", "5"),
        verl_row("Empty answer", ""),
        verl_row("No trace", "6", solution=""),
        {**verl_row("x", "7"), "prompt": [{"content": SYSTEM, "role": "system"}]},
    ]
    src = write_rows(tmp_path / "luffy" / "train.parquet", rows)
    report = convert_openr1(str(src.parent), tmp_path / "out", tokenizer="never/loaded")
    assert read(tmp_path / "out" / "train.parquet") == [
        {"problem": "Find x.", "answer": "3", "solution": "<think>\nx is 3\n</think>\n\\boxed{3}"},
        {"problem": "What is 2+2?", "answer": "4", "solution": "<think>\nok\n</think>\n\\boxed{1}"},
    ]
    assert report.parts["train"].skipped == {EMPTY_PROBLEM: 1, EMPTY_ANSWER: 1, EMPTY_SOLUTION: 1, MALFORMED_ROW: 1}
    no_target = write_rows(tmp_path / "no_target.parquet", [verl_row("Find x.", "3", solution=None)])
    with pytest.raises(DataError, match="no 'target' column"):
        convert_openr1(str(no_target), tmp_path / "out2")
    other = write_rows(tmp_path / "other.parquet", [{"question": "q", "label": "a"}])
    with pytest.raises(DataError, match="neither the raw OpenR1-Math-220k layout"):
        convert_openr1(str(other), tmp_path / "out3")


def test_hub_name_goes_through_datasets_streaming(tmp_path, monkeypatch, tokenizer_dir):
    import datasets

    rows = [raw_row(f"p{i}", str(i), [(LONG, True, True), (f"s{i}", True, True)]) for i in range(5)]
    write_rows(tmp_path / "hub" / "data" / "train-00000-of-00001.parquet", rows)
    real = datasets.load_dataset
    calls = []

    def fake_load_dataset(name, *args, **kwargs):
        calls.append((name, args, kwargs))
        return real(str(tmp_path / "hub"), *args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    kw = dict(tokenizer=str(tokenizer_dir), max_tokens=MAX_TOKENS, batch_size=2)
    convert_openr1("open-r1/OpenR1-Math-220k", tmp_path / "hub_out", **kw)
    assert calls == [("open-r1/OpenR1-Math-220k", (None,), {"streaming": True})]  # its splits, streamed: train
    convert_openr1(str(tmp_path / "hub" / "data"), tmp_path / "local_out", **kw)
    assert (tmp_path / "hub_out" / "train.parquet").read_bytes() == (
        tmp_path / "local_out" / "train.parquet"
    ).read_bytes()
    assert [r["solution"] for r in read(tmp_path / "hub_out" / "train.parquet")] == [f"s{i}" for i in range(5)]


# ---------------------------------------------------------------------------------------------------- benchmarks


@needs_valid
def test_real_luffy_benchmarks(tmp_path):
    source_rows = read(LUFFY_VALID)
    report = convert_eval(str(LUFFY_VALID), tmp_path / "eval")
    counts = Counter(r["data_source"] for r in source_rows)
    assert counts == {"aime": 240, "amc": 332, "math": 500, "minerva": 272, "olympiad_bench": 675}
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == sorted(
        ["all.parquet"] + [f"{s}.parquet" for s in counts]
    )
    everything = read(tmp_path / "eval" / "all.parquet")
    assert len(everything) == 2019 and report.written == 2019 and not report.bad_rows
    for row, src in zip(everything, source_rows):
        assert row["problem"] == src["prompt"][-1]["content"].strip()
        assert row["answer"] == src["reward_model"]["ground_truth"]
        assert row["data_source"] == src["data_source"]
        assert "Your task is to follow" not in row["problem"]
    for source, n in counts.items():
        rows = read(tmp_path / "eval" / f"{source}.parquet")
        assert len(rows) == n and {r["data_source"] for r in rows} == {source}
    dedup = convert_eval(str(LUFFY_VALID), tmp_path / "dedup", dedup=True)
    assert {name: p.written for name, p in dedup.parts.items()} == {
        "aime": 30,
        "math": 500,
        "olympiad_bench": 675,
        "amc": 83,
        "minerva": 272,
    }
    assert dedup.filtered == {DUPLICATE: 2019 - 1560}


def test_eval_bad_rows_file_names_and_determinism(tmp_path, capsys):
    rows = [
        verl_row("Q1", "1", data_source="MATH 500"),
        verl_row("Q2", "2", data_source="aime"),
        verl_row("Q3", "3", data_source=""),
        verl_row("", "4", data_source="aime"),
        verl_row("Q5", "", data_source="aime"),
        verl_row("Q6", "6", data_source="aime"),
    ]
    src = write_rows(tmp_path / "valid.parquet", rows)
    assert main(["--eval-source", str(src), "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "valid.parquet row 2: empty data_source" in printed and "valid.parquet row 3: empty problem" in printed
    assert re.search(r"aime\s+4\s+2\s+2\s+0\n", printed)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["MATH_500.parquet", "aime.parquet", "all.parquet"]
    assert [r["problem"] for r in read(tmp_path / "a" / "all.parquet")] == ["Q1", "Q2", "Q6"]
    assert read(tmp_path / "a" / "MATH_500.parquet") == [{"problem": "Q1", "answer": "1", "data_source": "MATH 500"}]
    convert_eval(str(src), tmp_path / "b")
    for name in ("all", "aime", "MATH_500"):
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes()
    assert main(["--eval-source", str(src), "--out", str(tmp_path / "c"), "--strict"]) == 1
    assert EMPTY_DATA_SOURCE in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_eval_numbered_options_become_letters(tmp_path, capsys):
    """LUFFY's ARC-c numbers some options 1) to 4) with answers 1-4: they become A) to D) and letter answers, in the
    multiple-choice benchmarks only, and only the trailing option lines."""
    from echovl.reward import judge

    sled = (
        "Which describes a sled going downhill?\n\n1) KE decreases.\n2) KE increases.\n3) Both fall.\n4) Both rise.\n"
    )
    steps = "Steps:\n1) heat it\n2) stir it\n\nWhich is safe?\n\n1) ice\n2) fire"
    rows = [
        verl_row(sled, "2", data_source="arc_c"),
        verl_row("Which?\n\nA) x\nB) y\nC) z\nD) w\n", "C", data_source="arc_c"),
        verl_row("Pick.\n\n1) up\n2) down\n3) same", "3", data_source="arc_c"),
        verl_row(steps, "1", data_source="arc_c"),
        verl_row("Which?\n\n1) x\n2) y\n3) z\n4) w", "5", data_source="arc_c"),  # no option 5
        verl_row("Which?\n\n1) x\n3) y", "1", data_source="arc_c"),  # not numbered 1, 2, ...
        verl_row("How many are true?\n1) 2 > 1\n2) 1 > 2\n3) 3 > 2", "2", data_source="math"),
        verl_row("Steps:\n1) a\n2) b\n\nA) yes\nB) no", "B", data_source="gpqa"),
    ]
    src = write_rows(tmp_path / "valid.parquet", rows)
    report = convert_eval(str(src), tmp_path / "out")
    assert "arc_c: 3 of 6 rows had options numbered 1) 2) ..." in capsys.readouterr().err
    assert report.parts["arc_c"].skipped == {NOT_A_LETTER: 2} and report.parts["arc_c"].written == 4
    assert [b.where for b in report.bad_rows] == ["valid.parquet row 4", "valid.parquet row 5"]
    written = read(tmp_path / "out" / "all.parquet")
    assert [(r["problem"], r["answer"]) for r in written] == [
        (
            "Which describes a sled going downhill?\n\nA) KE decreases.\nB) KE increases.\nC) Both fall.\nD) Both rise.",
            "B",
        ),
        ("Which?\n\nA) x\nB) y\nC) z\nD) w", "C"),
        ("Pick.\n\nA) up\nB) down\nC) same", "C"),
        ("Steps:\n1) heat it\n2) stir it\n\nWhich is safe?\n\nA) ice\nB) fire", "A"),
        ("How many are true?\n1) 2 > 1\n2) 1 > 2\n3) 3 > 2", "2"),  # math: left as it is
        ("Steps:\n1) a\n2) b\n\nA) yes\nB) no", "B"),
    ]
    # the relabelled row is graded as multiple choice, boxed or stated
    for response in ("\\boxed{B) KE increases.}", "The answer is (B).", "ANSWER: B"):
        assert judge(response, written[0]["answer"]) == ("B", True)
    with pytest.raises(DataError, match=NOT_A_LETTER):
        convert_eval(str(src), tmp_path / "strict", strict=True)


@pytest.mark.parametrize("sources", [["all"], ["a/b", "a_b"]])
def test_eval_file_name_collisions(tmp_path, sources):
    src = write_rows(tmp_path / "valid.parquet", [verl_row("Q", "1", data_source=s) for s in sources])
    with pytest.raises(DataError, match="would be written to"):
        convert_eval(str(src), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_eval_needs_data_source(tmp_path):
    src = write_rows(tmp_path / "valid.parquet", [{k: v for k, v in verl_row("Q", "1").items() if k != "data_source"}])
    with pytest.raises(DataError, match="data_source"):
        convert_eval(str(src), tmp_path / "out")


# ------------------------------------------------------------------------------------------------ consumers


@pytest.mark.easyr1
def test_outputs_load_with_datasets_and_rlhf_dataset(tmp_path, text_only_tokenizer):
    from datasets import load_dataset

    write_rows(tmp_path / "luffy.parquet", [verl_row(f"Find {i}.", str(i), data_source="math") for i in range(4)])
    convert_openr1(str(tmp_path / "luffy.parquet"), tmp_path / "out")
    convert_eval(str(tmp_path / "luffy.parquet"), tmp_path / "out" / "eval")
    train = load_dataset("parquet", data_files=str(tmp_path / "out" / "train.parquet"), split="train")
    assert train.column_names == ["problem", "answer", "solution"] and len(train) == 4
    evaluation = load_dataset("parquet", data_files=str(tmp_path / "out" / "eval" / "all.parquet"), split="train")
    assert evaluation.column_names == ["problem", "answer", "data_source"]

    pytest.importorskip("verl.utils.dataset", reason="EasyR1 (package verl) is not installed")
    from verl.utils.dataset import RLHFDataset

    for path in (tmp_path / "out" / "train.parquet", tmp_path / "out" / "eval" / "all.parquet"):
        dataset = RLHFDataset(
            str(path),
            text_only_tokenizer,
            None,
            prompt_key="problem",
            answer_key="answer",
            image_key="images",
            max_prompt_length=256,
            # datasets >= 5 runs even a one-worker filter in a forked pool, which can hang in a test process
            # that already runs torch threads; that filter is EasyR1's, not what this test is about
            filter_overlong_prompts=False,
        )
        item = dataset[2]
        assert item["ground_truth"] == "2" and item["position_ids"].shape == (256,)
        text = text_only_tokenizer.decode(item["input_ids"][item["attention_mask"].bool()])
        assert "<|im_start|>user\nFind 2.<|im_end|>" in text


def test_cli(tmp_path):
    script = REPO / "data_prep" / "openr1_math.py"
    help_text = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=True
    ).stdout
    options = (
        "--source --eval-source --out --tokenizer --max-tokens --batch-size --split --hub-config --dedup --strict"
    )
    for option in options.split() + ["--progress"]:
        assert option in help_text
    with pytest.raises(SystemExit) as exc:
        main(["--dedup"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        main(["--source", "a/b", "--eval-source", "c/d"])
    assert exc.value.code == 2
    src = write_rows(tmp_path / "valid.parquet", [verl_row("Q", "1", data_source="amc")])
    done = subprocess.run(
        [sys.executable, str(script), "--eval-source", str(src)], capture_output=True, text=True, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert read(tmp_path / "data" / "openr1_math" / "eval" / "amc.parquet")[0]["problem"] == "Q"  # the default --out
