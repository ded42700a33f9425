import importlib.util
from pathlib import Path

import pytest

from echovl.reward import accuracy_score, compute_score, format_score, grade

GOOD = "<think>\nAngle B is 180 - 90 - 30 = 60.\n</think>\nThe answer is \\boxed{60}."


def test_correct_and_well_formatted():
    assert grade(GOOD, "60") == {"overall": 1.0, "format": 1.0, "accuracy": 1.0}


@pytest.mark.parametrize(
    "response,truth,fmt,acc",
    [
        ("\\boxed{60}", "60", 0.0, 1.0),  # right answer, no think block
        ("<think>x</think> \\boxed{61}", "60", 1.0, 0.0),  # formatted, wrong
        ("<think>x</think> no box", "60", 0.0, 0.0),
        ("< think >x</ think > \\boxed{60}", "60", 1.0, 1.0),  # spacing inside tags is tolerated
        ("<think>\\boxed{60}</think> \\boxed{7}", "60", 1.0, 0.0),  # the answer after </think> counts
        ("<think>a</think><think>b</think>\\boxed{60}", "60", 0.0, 1.0),  # two think blocks: bad format
        ("<think>x</think>\\boxed{3\\sqrt{3}}", "3\\sqrt{3}", 1.0, 1.0),
        ("<think>x</think>\\boxed{\\frac{1}{2}}", "0.5", 1.0, 1.0),
        ("<think>x</think>\\boxed{60^\\circ}", "60", 1.0, 1.0),
    ],
)
def test_format_and_accuracy_rules(response, truth, fmt, acc):
    assert format_score(response) == fmt
    assert accuracy_score(response, truth) == acc


def test_overall_mixes_format_weight_and_batch_api():
    scores = compute_score(
        [{"response": "\\boxed{60}", "ground_truth": "60"}, {"response": GOOD, "ground_truth": "7"}], format_weight=0.5
    )
    assert scores == [
        {"overall": 0.5, "format": 0.0, "accuracy": 1.0},
        {"overall": 0.5, "format": 1.0, "accuracy": 0.0},
    ]
    with pytest.raises(ValueError):
        grade(GOOD, "60", format_weight=2)


def test_file_loads_standalone_like_easyr1_does():
    """EasyR1 imports the reward file by path, outside the package: it must not use relative imports."""
    path = Path(__file__).resolve().parents[1] / "echovl" / "reward" / "math.py"
    spec = importlib.util.spec_from_file_location("custom_reward_fn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.REWARD_TYPE == "batch"
    assert module.compute_score([{"response": GOOD, "ground_truth": "60"}])[0]["accuracy"] == 1.0
