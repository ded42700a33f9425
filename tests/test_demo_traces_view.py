import json
import shutil
from pathlib import Path

import pytest

from echovl.demo.render import check_record, render_group
from echovl.demo.traces_view import group_choices, group_label, load_group_image, load_step, open_trace_folder
from echovl.traces import TRACE_SCHEMA, TraceError

EXAMPLE = Path(__file__).resolve().parent.parent / "demo" / "example_traces"


@pytest.fixture
def example_copy(tmp_path):
    return Path(shutil.copytree(EXAMPLE, tmp_path / "traces"))


def test_shipped_example_traces_are_valid_and_interesting():
    files = open_trace_folder(EXAMPLE)
    assert [step for step, _ in files] == [1, 2]
    kinds = set()
    for step_number, _ in files:
        step = load_step(files, step_number)
        assert step.error is None and len(step.records) == 4
        for record in step.records:
            assert record["schema"] == TRACE_SCHEMA and record["train_step"] == step_number
            check_record(record)
            image, note = load_group_image(EXAMPLE, record)
            assert note is None and image.size == (84, 84)
            flags = [r["verified"] for r in record["rollouts"]]
            kinds.add("degenerate" if all(flags) else "all-wrong" if not any(flags) else "mixed")
            clip = record["clip"]
            if any(flags):
                chosen = record["rollouts"][clip["rollout"]]
                assert chosen["verified"]
                assert clip["char_end"] == chosen["steps"][clip["step"]]["chars"][1]
                best = max(
                    s["entropy"] for r in record["rollouts"] if r["verified"] for s in r["steps"] if s["entropy"]
                )
                assert clip["step_entropy"] == pytest.approx(best, abs=1e-6)
            assert "echo-error" not in render_group(record).summary
    assert {"degenerate", "mixed"} <= kinds  # the example shows both cases


def test_folder_errors(tmp_path):
    with pytest.raises(TraceError, match="no trace folder given"):
        open_trace_folder("  ")
    with pytest.raises(TraceError, match="not a trace folder"):
        open_trace_folder(tmp_path / "missing")
    with pytest.raises(TraceError, match="no trace files"):
        open_trace_folder(tmp_path)
    files = open_trace_folder(EXAMPLE)
    with pytest.raises(TraceError, match="no trace file for training step 7"):
        load_step(files, 7)


def test_bad_line_keeps_earlier_groups_and_names_the_line(example_copy):
    path = example_copy / "step_000001.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], lines[1], "{broken", *lines[2:]]) + "\n")
    step = load_step(open_trace_folder(example_copy), 1)
    assert len(step.records) == 2
    assert "step_000001.jsonl:3: not valid JSON" in step.error
    path.write_text("")
    step = load_step(open_trace_folder(example_copy), 1)
    assert step.records == [] and "has no groups" in step.error
    path.write_bytes(b"\xff\xfe\x00")
    assert "cannot read the file" in load_step(open_trace_folder(example_copy), 1).error


def test_group_labels_and_choices():
    files = open_trace_folder(EXAMPLE)
    step = load_step(files, 1)
    choices = group_choices(step)
    assert [index for _, index in choices] == [0, 1, 2, 3]
    for (label, index), record in zip(choices, step.records):
        assert label == group_label(index, record)
        assert f"group {record['group']}" in label
        verified = sum(r["verified"] for r in record["rollouts"])
        assert f"({verified}/{len(record['rollouts'])})" in label
    record = {"group": "x", "rollouts": [{"verified": False}], "clip": None}
    assert group_label(5, record) == "#5 · group x · all wrong (0/1) · no clip"


def test_group_image_problems(example_copy):
    record = json.loads((example_copy / "step_000001.jsonl").read_text().splitlines()[0])
    assert load_group_image(example_copy, {**record, "image": None}) == (None, None)
    image, note = load_group_image(example_copy, {**record, "image": "images/missing.png"})
    assert image is None and "missing.png: no such file" in note
    (example_copy / "images" / "junk.png").write_text("junk")
    image, note = load_group_image(example_copy, {**record, "image": "images/junk.png"})
    assert image is None and "cannot open the image junk.png" in note
    image, note = load_group_image(example_copy, {**record, "image": "../../etc/passwd"})
    assert image is None and "outside the trace folder" in note
