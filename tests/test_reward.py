import importlib.util
import sys
import threading
from pathlib import Path

import pytest

from echovl.reward import accuracy_score, compute_score, format_score, grade, judge
from echovl.reward.math import MAX_ANSWER_CHARS, answer_region, answers_match, choice_letter, last_boxed

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


# Hard cases. Each verdict was worked out by hand from the rules in echovl/reward/math.py's docstring (last box after
# </think>; math equality; a letter reference takes a boxed or stated letter), not by running the grader.
# (response, reference, think_opened, extracted answer, correct)
HARD_CASES = [
    # fractions and decimals
    ("<think>half</think> \\boxed{\\dfrac{1}{2}}", "0.5", False, "\\dfrac{1}{2}", True),
    ("\\boxed{0.5}", "\\frac{1}{2}", False, "0.5", True),
    ("\\boxed{\\frac{2}{4}}", "\\frac12", False, "\\frac{2}{4}", True),
    ("\\boxed{\\tfrac{3}{4}}", "0.75", False, "\\tfrac{3}{4}", True),
    ("\\boxed{0.33}", "\\frac{1}{3}", False, "0.33", False),  # a rounded third is not a third
    ("\\boxed{142}", "142.0", False, "142", True),  # LUFFY's AMC references are floats
    ("\\boxed{4.5}", "\\frac{9}{2}", False, "4.5", True),
    ("\\boxed{1.59}", "1.6", False, "1.59", False),
    # degrees and units
    ("\\boxed{60^\\circ}", "60", False, "60^\\circ", True),
    ("\\boxed{60}", "60^{\\circ}", False, "60", True),
    ("\\boxed{30^\\circ}", "60", False, "30^\\circ", False),
    ("\\boxed{12 \\text{ cm}}", "12", False, "12 \\text{ cm}", True),
    # Geometry3K references are written with spaces
    ("\\boxed{5\\sqrt{3}}", "5 \\sqrt { 3 }", False, "5\\sqrt{3}", True),
    ("\\boxed{5\\sqrt{2}}", "5 \\sqrt { 3 }", False, "5\\sqrt{2}", False),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", False, "\\frac{\\sqrt{3}}{2}", True),  # nested braces
    # intervals
    ("\\boxed{(1, 2]}", "(1,2]", False, "(1, 2]", True),
    ("\\boxed{[1,2)}", "(1,2]", False, "[1,2)", False),  # other ends open
    ("\\boxed{(-\\infty, 3)}", "(-\\infty,3)", False, "(-\\infty, 3)", True),
    # sets and tuples
    ("\\boxed{\\{3, 1, 2\\}}", "\\{1,2,3\\}", False, "\\{3, 1, 2\\}", True),  # a set has no order
    ("\\boxed{\\{1, 2\\}}", "\\{1,2,3\\}", False, "\\{1, 2\\}", False),
    ("\\boxed{(3, \\frac{\\pi}{2})}", "\\left( 3, \\frac{\\pi}{2} \\right)", False, "(3, \\frac{\\pi}{2})", True),
    ("\\boxed{(\\frac{\\pi}{2}, 3)}", "\\left( 3, \\frac{\\pi}{2} \\right)", False, "(\\frac{\\pi}{2}, 3)", False),
    # equations and symbols
    ("\\boxed{x = 5}", "5", False, "x = 5", True),
    ("\\boxed{2^{10}}", "1024", False, "2^{10}", True),
    # what mathruler adds to math-verify
    ("\\boxed{10\\%}", "10", False, "10\\%", True),
    ("\\boxed{1.5e3}", "1500", False, "1.5e3", True),
    ("\\boxed{\\emptyset}", "\\varnothing", False, "\\emptyset", True),
    # multiple choice: the reference is a letter
    ("<think>rotation</think> The answer is \\boxed{C}.", "C", False, "C", True),
    ("\\boxed{(B)}", "C", False, "B", False),
    ("\\boxed{\\text{C}}", "C", False, "C", True),
    ("\\boxed{C) Planetary days will become shorter.}", "C", False, "C", True),
    ("The answer is (C).", "C", False, "C", True),  # stated, no box
    ("Reasoning...\nANSWER: D", "D", False, "D", True),  # GPQA's requested format
    ("**Answer:** J", "J", False, "J", True),  # MMLU-Pro has ten options
    ("A looks plausible, but the answer is B.", "A", False, "B", False),
    ("\\boxed{A}. On reflection the answer is (C).", "C", False, "A", False),  # a box beats a statement
    ("The answer is Avogadro's number.", "A", False, None, False),  # a word is not a letter
    ("\\boxed{10^{-4} eV}", "A", False, None, False),  # the option's text is not its letter
    ("<think>option C</think> the answer is: **C**", "C", False, "C", True),  # markup between
    ("Reasoning.\nANSWER: $C$", "C", False, "C", True),  # GPQA's prompt asks for 'ANSWER: $LETTER'
    ("The answer is $\\textbf{(B)}$.", "B", False, "B", True),
    ("The correct option is C.", "C", False, "C", True),
    ("the correct choice is (B)", "C", False, "B", False),
    ("Answer: C\nThe days get shorter.", "C", False, "C", True),  # the letter ends its line
    ("Answer: I think it is B", "B", False, None, False),  # "I" starts a word: no letter stated
    ("The answer is C because days get shorter.", "C", False, None, False),  # a letter must end there
    ("Answer: A and B", "A", False, None, False),
    ("The answer is B (oxygen).", "B", False, "B", True),  # a space, then a bracket: the letter ended
    ("Answer: C - 42", "C", False, "C", True),  # ... or a dash
    ("the answer is B\u3002", "B", False, "B", True),  # full-width full stop
    ("answer: b", "B", False, None, False),  # letters are capitals
    ("\\boxed{I think B}", "B", False, None, False),  # a boxed word is not a letter either
    ("\\boxed{A and B}", "A", False, None, False),
    ("\\boxed{(C) 42}", "C", False, "C", True),
    ("The answer is (C). No: the correct option is D.", "D", False, "D", True),  # the last statement counts
    ("\\boxed{B}. The correct option is C.", "C", False, "B", False),  # a box beats a statement
    ("The answer is (2).", "B", False, None, False),  # a number is not a letter (ARC-c's 1)-4) become A-D)
    ("\\boxed{B) Kinetic energy increases and potential energy decreases.}", "B", False, "B", True),
    # a boxed answer inside <think> only
    ("<think>so \\boxed{5}</think> The answer is five.", "5", False, None, False),
    ("<think>so \\boxed{5}", "5", False, None, False),  # the think block never closes
    ("so \\boxed{5}", "5", True, None, False),  # the prompt opened the block; it never closes
    ("so 5</think> \\boxed{5}", "5", True, "5", True),
    ("<think>\\boxed{4}</think>\\boxed{5}", "5", False, "5", True),
    ("<think>\\boxed{C}</think> so the answer is (B)", "C", False, "B", False),
    ("<think>the answer is (C)</think> I am not sure.", "C", False, None, False),  # a stated letter too
    ("the answer is (C)", "C", True, None, False),  # the prompt opened the block; it never closes
    ("the answer is (B)</think> ANSWER: $C$", "C", True, "C", True),
    # several boxes: the last one counts
    ("\\boxed{3}, wait, no: \\boxed{4}", "4", False, "4", True),
    ("\\boxed{4}. Hmm, so \\boxed{3}", "4", False, "3", False),
    ("\\boxed{4} and then \\boxed{unclosed", "4", False, "4", True),  # an unclosed box is no box
    # no box at all for a math reference
    ("The answer is 5.", "5", False, None, False),
]


@pytest.mark.parametrize("response,reference,think_opened,answer,correct", HARD_CASES)
def test_hard_cases_and_training_reward_agree(response, reference, think_opened, answer, correct):
    verdict = judge(response, reference, think_opened=think_opened)
    assert verdict.answer == answer
    assert verdict.correct is correct
    # the training reward (EasyR1's batch function) gives the same verdict for the same response
    [score] = compute_score([{"response": response, "ground_truth": reference}], think_opened=think_opened)
    assert score["accuracy"] == float(correct)


def test_shortcuts_agree_with_math_verify():
    """The sure cases settled before math-verify (layout, integers, rationals) are ones math-verify settles the same
    way; mathruler only speaks for percent signs, e-notation and empty sets."""
    from echovl.reward.math import _MATHRULER_ADDS, _math_verify_equal

    pairs = [
        (answer, reference) for _, reference, _, answer, _ in HARD_CASES if answer and not choice_letter(reference)
    ]
    pairs += [("(1 , 2]", "\\left(1,2\\right]"), ("\\dfrac{1}{2}", "\\frac{1}{2}"), ("0.50", "1/2"), ("-3", "-3.0")]
    pairs += [("141", "142.0"), ("142.00", "142"), ("\\frac{4}{2}", "3")]
    for answer, reference in pairs:
        if _MATHRULER_ADDS.search(answer + reference):
            assert not _math_verify_equal(answer, reference) and answers_match(answer, reference)
        else:
            assert answers_match(answer, reference) == _math_verify_equal(answer, reference), (answer, reference)


def test_helpers():
    assert last_boxed("a \\boxed{x^{2}} b \\fbox{7}") == "7"
    assert last_boxed("no box") is None
    assert answer_region("<think>a</think>b") == "b" and answer_region("<think>a") is None
    assert answer_region("plain") == "plain" and answer_region("a", think_opened=True) is None
    assert [choice_letter(r) for r in ("C", "(C)", "\\text{C}", "c", "CD", "12", "$B$")] == [
        "C",
        "C",
        "C",
        None,
        None,
        None,
        "B",
    ]


def test_format_with_think_opened_by_the_prompt():
    assert format_score("steps</think>\\boxed{1}", think_opened=True) == 1.0
    assert format_score("<think>steps</think>\\boxed{1}", think_opened=True) == 0.0  # a second block opened
    assert format_score("steps</think>\\boxed{1}") == 0.0


def test_long_answers_are_compared_as_strings():
    long = "x+" * MAX_ANSWER_CHARS + "1"
    assert judge(f"\\boxed{{{long}}}", long).correct
    assert not judge(f"\\boxed{{{long}}}", "1+" + long[:-1] + "x").correct


def test_grading_off_the_main_thread():
    """math-verify's timeouts need SIGALRM, which only the main thread may set: elsewhere they are off."""
    cases = [(response, reference, correct) for response, reference, opened, _, correct in HARD_CASES if not opened]
    results = []

    def run():
        answers_match.cache_clear()  # grade for real in this thread, not from the main thread's cache
        results.extend(judge(r, t).correct for r, t, _ in cases)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert results == [correct for _, _, correct in cases]


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


@pytest.mark.parametrize("register", [True, False])
def test_file_loads_standalone_like_easyr1_does(register, monkeypatch):
    """EasyR1 imports the reward file by path, outside the package (registered as ``custom_reward_fn``): it must not
    use relative imports, and must also load when the module is not registered."""
    path = Path(__file__).resolve().parents[1] / "echovl" / "reward" / "math.py"
    spec = importlib.util.spec_from_file_location("custom_reward_fn", path)
    module = importlib.util.module_from_spec(spec)
    if register:
        monkeypatch.setitem(sys.modules, "custom_reward_fn", module)
    spec.loader.exec_module(module)
    assert module.REWARD_TYPE == "batch"
    assert module.compute_score([{"response": GOOD, "ground_truth": "60"}])[0]["accuracy"] == 1.0
    assert module.compute_score([{"response": "the answer is (B)", "ground_truth": "B"}])[0]["accuracy"] == 1.0
