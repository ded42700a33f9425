import copy
import re

import pytest

from echovl.demo.render import (
    RecordError,
    check_record,
    entropy_range,
    render_chart,
    render_group,
    render_rollouts,
    render_summary,
    step_shade,
)
from tests.demo_support import elements


def _rollout(lines, entropies, verified):
    text, steps, position = "", [], 0
    for line, entropy in zip(lines, entropies):
        steps.append(
            {"tokens": [0, 1], "chars": [position, position + len(line)], "text_tokens": 3, "entropy": entropy}
        )
        text += line
        position += len(line)
    return {
        "text": text,
        "reward": float(verified),
        "accuracy": float(verified),
        "verified": verified,
        "num_tokens": 9,
        "steps": steps,
    }


def _record(clip=True):
    rollouts = [
        _rollout(["<think>\n", 'a < b & "c".\n', "so 5.\n", "\\boxed{5}"], [0.1, 0.9, 0.4, 0.2], True),
        _rollout(["<think>\n", "x = 7.\n", "\\boxed{7}"], [0.1, 1.5, None], False),
        _rollout(["<think>\n", "y.\n", "\\boxed{5}"], [0.2, 0.3, 0.1], True),
    ]
    record = {
        "schema": "echovl.trace/1",
        "source": "test",
        "train_step": 12,
        "group": "g7",
        "prompt": "Find <x>.",
        "answer": "5",
        "image": None,
        "degenerate": False,
        "all_wrong": False,
        "rollouts": rollouts,
        "clip": {"rollout": 0, "step": 1, "step_entropy": 0.9, "length": 6, "token_end": 6, "char_end": 21}
        if clip
        else None,
    }
    return record


def test_summary_verdicts_and_numbers():
    record = _record()
    summary = render_summary(record, notes=["hello <note>"])
    [card] = elements(summary, "echo-summary")
    assert card["attrs"]["data-kind"] == "mixed"
    assert "2 of 3 rollouts verified" in card["text"]
    assert (
        "#0" in card["text"] and "#1" in card["text"] and "6 tokens" in card["text"] and "0.900 nats" in card["text"]
    )
    assert "hello <note>" in card["text"] and "<note>" not in summary  # escaped
    for rollout in record["rollouts"]:
        rollout["verified"] = True
    assert elements(render_summary(record), "echo-summary")[0]["attrs"]["data-kind"] == "degenerate"
    assert "the EchoClip is the only training signal" in render_summary(record)
    for rollout in record["rollouts"]:
        rollout["verified"] = False
    record["clip"] = None
    all_wrong = render_summary(record)
    assert elements(all_wrong, "echo-summary")[0]["attrs"]["data-kind"] == "all-wrong"
    assert "no EchoClip" in all_wrong


def test_chart_series_gaps_and_chosen_step():
    chart = render_chart(_record())
    [svg] = elements(chart, "echo-chart", "svg")
    series = elements(chart, "echo-series")
    assert [s["attrs"]["data-rollout"] for s in series] == ["0", "1", "2"]
    assert [s["attrs"]["data-verified"] for s in series] == ["true", "false", "true"]
    # one point per step with an entropy; rollout 1's last step has none
    circles = [e for e in elements(chart, tag="circle") if "rollout 1 " in e["text"]]
    assert len(circles) == 2
    [chosen] = elements(chart, "echo-chosen-step")
    assert (chosen["attrs"]["data-rollout"], chosen["attrs"]["data-step"]) == ("0", "1")
    assert "EchoClip: rollout 0, step 1 (0.900 nats)" in chosen["text"]
    # y of a point grows with entropy going down the page: 1.5 nats is the highest point
    points = {e["text"]: float(e["attrs"]["cy"]) for e in elements(chart, tag="circle") if e["text"]}
    assert min(points, key=points.get).startswith("rollout 1 (not verified), step 1: 1.500")
    assert "not verified" in chart and "✓" in chart and "✗" in chart
    assert not elements(render_chart(_record(clip=False)), "echo-chosen-step")


def test_chart_without_steps():
    record = _record()
    for rollout in record["rollouts"]:
        rollout["steps"] = []
    record["clip"] = None
    assert "No steps to plot" in render_chart(record)


def test_rollouts_shading_clip_and_escaping():
    record = _record()
    html = render_rollouts(record)
    cards = elements(html, "echo-rollout")
    assert [c["attrs"]["data-rollout"] for c in cards] == ["0", "1", "2"]  # chosen rollout first
    assert "echo-chosen" in cards[0]["classes"] and "✓ verified" in cards[0]["text"]
    assert "✗ not verified" in cards[1]["text"]
    [clip] = elements(html, "echo-clip", "span")[1:]  # the first one is the legend's sample
    chosen = record["rollouts"][0]
    assert clip["text"] == chosen["text"][: record["clip"]["char_end"]].rstrip("\n")
    # the full text of each rollout is shown, escaped
    texts = elements(html, "echo-text")
    assert texts[0]["text"].replace("◀ EchoClip ends: step 1, 0.900 nats", "") == chosen["text"]
    assert "&lt;think&gt;" in html and "a &lt; b &amp; &quot;c&quot;" in html
    # shading follows entropy: higher entropy, more opaque
    steps = elements(html, "echo-step")
    alphas = {}
    for step in steps:
        match = re.search(r"rgba\([^)]*, ([0-9.]+)\)", step["attrs"]["style"])
        alphas[step["attrs"]["title"]] = float(match.group(1)) if match else 0.0
    assert alphas["step 1: 1.500 nats over 3 text tokens"] == pytest.approx(0.75)
    assert alphas["step 1: 0.900 nats over 3 text tokens"] > alphas["step 2: 0.400 nats over 3 text tokens"]
    [no_text] = [s for s in steps if s["attrs"]["title"] == "step 2: no text"]
    assert no_text["attrs"]["style"] == "background: transparent"
    assert [s for s in steps if "echo-chosen-step" in s["classes"]][0]["attrs"]["data-step"] == "1"


def test_step_shade_and_range():
    assert step_shade(None, 1.0) == "transparent"
    assert step_shade(float("nan"), 1.0) == "transparent"
    low, high = step_shade(0.1, 1.0), step_shade(1.0, 1.0)
    assert low != high and high.endswith("0.750)")
    assert step_shade(0.5, 0.0).endswith("0.060)")
    assert entropy_range(_record()) == 1.5


def _soft_record():
    """Soft selection: three clips (rollout 0 step 1, rollout 2 step 1, rollout 0 step 2), weights summing to 1."""
    record = _record()
    first = dict(record["clip"], weight=0.5)
    record["clip"] = first
    record["clips"] = [
        first,
        {"rollout": 2, "step": 1, "step_entropy": 0.3, "length": 4, "token_end": 4, "char_end": 11, "weight": 0.3},
        {"rollout": 0, "step": 2, "step_entropy": 0.4, "length": 8, "token_end": 8, "char_end": 27, "weight": 0.2},
    ]
    return record


def test_several_clips_show_with_their_weights():
    record = _soft_record()
    [card] = elements(render_summary(record), "echo-summary")
    assert "3 (weights sum to 1.000)" in card["text"]
    rows = elements(render_summary(record), tag="tr")[1:]  # the table of clips, heaviest first
    assert [(r["attrs"]["data-rollout"], r["attrs"]["data-step"]) for r in rows] == [
        ("0", "1"),
        ("2", "1"),
        ("0", "2"),
    ]
    assert ["0.500" in rows[0]["text"], "0.300" in rows[1]["text"], "0.200" in rows[2]["text"]] == [True] * 3
    chart = render_chart(record)
    [chosen] = elements(chart, "echo-chosen-step")
    assert "EchoClip: rollout 0, step 1 (0.900 nats), weight 0.500" in chosen["text"]
    others = elements(chart, "echo-other-clip")
    assert [(o["attrs"]["data-rollout"], o["attrs"]["data-step"]) for o in others] == [("2", "1"), ("0", "2")]
    assert "weight 0.300" in others[0]["text"] and "weight 0.200" in others[1]["text"]
    html = render_rollouts(record)
    cards = elements(html, "echo-rollout")
    assert [c["attrs"]["data-rollout"] for c in cards] == ["0", "2", "1"]  # rollouts with clips first
    assert "EchoClip: steps 0–1, 6 tokens, weight 0.500" in cards[0]["text"]
    assert "also an EchoClip: steps 0–2, 8 tokens, weight 0.200" in cards[0]["text"]
    assert "also an EchoClip: steps 0–1, 4 tokens, weight 0.300" in cards[1]["text"]
    assert "EchoClip" not in cards[2]["text"]
    # one clip (the paper's selection): no table, no weights
    assert not elements(render_summary(_record()), tag="tr") and ", weight " not in render_chart(_record())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r.update(rollouts="x"), "'rollouts' must be a list"),
        (lambda r: r["rollouts"][1]["steps"][0].update(chars=[0, 999]), r"rollouts\[1\].steps\[0\].chars"),
        (lambda r: r["rollouts"][0].pop("text"), r"rollouts\[0\] must be an object with a 'text'"),
        (lambda r: r["clip"].update(rollout=5), "clip.rollout 5"),
        (lambda r: r["clip"].update(step=9), "clip.step 9"),
        (lambda r: r["rollouts"][2]["steps"][1].update(entropy="high"), "entropy must be a number"),
        (lambda r: r.update(clips=[{"rollout": 1, "step": 7}]), r"clips\[0\].step 7"),
        (lambda r: r.update(clips=[{"rollout": 9, "step": 0}]), r"clips\[0\].rollout 9"),
        (lambda r: r.update(clips={}), "'clips' must be a list"),
    ],
)
def test_bad_records_give_an_error_view(edit, message):
    record = copy.deepcopy(_record())
    edit(record)
    with pytest.raises(RecordError, match=message):
        check_record(record)
    view = render_group(record)
    assert "echo-error" in view.summary and "cannot show group g7" in view.summary
    assert view.chart == view.rollouts == ""


def test_render_group_on_a_real_trace_record(qwen_tokenizer):
    from tests.test_traces import _records

    records, _ = _records(qwen_tokenizer)
    for record, _image in records:
        view = render_group(record)
        assert "echo-error" not in view.summary
        assert elements(view.chart, "echo-chart", "svg")
        if record["clip"] is not None:
            clip = record["clip"]
            [span] = elements(view.rollouts, "echo-clip", "span")[1:]
            assert span["text"] == record["rollouts"][clip["rollout"]]["text"][: clip["char_end"]].rstrip("\n")
