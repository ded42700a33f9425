"""The grader shared by the training reward and the benchmark evaluation: boxed math answers and choice letters.

One verdict for a response, wherever it is graded (EasyR1's reward, TRL's reward functions, ``echovl.eval``):

- **Where the answer is.** When the response opens a ``<think>`` block (or the prompt did: ``think_opened=True``,
  e.g. a chat template ending in ``<think>``), only the text after the last ``</think>`` counts; a think block that
  is never closed has no answer. Otherwise the whole response counts.
- **Math** (any reference that is not a choice letter): the answer is the content of the last ``\\boxed{}`` (or
  ``\\fbox{}``) there. It is correct when it is equal to the reference for `math-verify
  <https://github.com/huggingface/Math-Verify>`_ (LaTeX and plain expressions parsed to sympy: fractions and
  decimals, ``\\dfrac``, degrees, units, intervals, sets, tuples, matrices, equations ``x = 5``). Sure cases are
  settled before math-verify parses anything (its LaTeX parser takes milliseconds per new answer): the same text up
  to spacing, ``\\left``/``\\right``, ``\\dfrac`` and degree signs; whole numbers, however written (``142`` against
  AMC's ``142.0``), equal or not; equal rationals written as integers, decimals or simple fractions. mathruler's ``grade_answer`` is kept only where it adds to
  math-verify, for the three things math-verify misses: a percent sign against a bare number (``10\\%`` =
  ``10``), e-notation (``1.5e3`` = ``1500``) and ``\\emptyset`` = ``\\varnothing``; it is asked only when
  math-verify said no and the answer or reference has one of them (``tests/test_reward.py`` pins each).
- **Multiple choice** (the reference is one capital letter, as in ARC-c, GPQA and MMLU-Pro): the letter of the
  last ``\\boxed{}`` (``C``, ``(C)``, ``\\text{C}``, ``C) text``), or, with no box, the last letter stated as an
  answer: after ``answer`` / ``the correct option`` / ``the correct choice`` (``is``, ``:``, ``**``, ``$`` and
  brackets allowed in between: ``the answer is (C)``, ``Answer: C``, ``ANSWER: $C$``, ``the answer is: **C**``,
  ``The correct option is C.``), and only where the letter ends there (markup, a closing bracket, punctuation or
  the end of the line), so that a word is never read as a letter (``Answer: I think it is B`` and ``The answer is
  C because ...`` state none). It is correct when it is the reference letter.

The training reward per sample (EasyR1's batch reward function :func:`compute_score`) is
``{"overall", "format", "accuracy"}``: ``format`` = 1 for ``<think>...</think>`` followed by a boxed answer,
``accuracy`` = the verdict above, ``overall = (1 - format_weight) * accuracy + format_weight * format``. EchoRL's
"verified" flag is ``accuracy`` (``echo.success_key``), never ``overall``. The evaluation uses :func:`judge`, which
also returns the extracted answer.

EasyR1 loads this file on its own (``reward_function=.../echovl/reward/math.py:compute_score``), so it imports
nothing relative. math-verify's timeouts use ``SIGALRM``, which only works in the main thread; elsewhere (a reward
thread pool) they are off, and answers longer than :data:`MAX_ANSWER_CHARS` are compared as strings only.
"""

from __future__ import annotations

import functools
import re
import threading
from fractions import Fraction
from typing import Any, NamedTuple

from mathruler.grader import grade_answer as _mathruler_equal

__all__ = [
    "GRADER_VERSION",
    "MAX_ANSWER_CHARS",
    "Judgement",
    "accuracy_score",
    "answer_region",
    "answers_match",
    "choice_letter",
    "compute_score",
    "extract_answer",
    "format_score",
    "grade",
    "judge",
    "last_boxed",
]

REWARD_NAME = "echovl_math"
REWARD_TYPE = "batch"

GRADER_VERSION = 4
"""Bumped whenever a verdict can change; the evaluation re-grades stored samples graded by another version."""

MAX_ANSWER_CHARS = 1000
"""Longer boxed answers are compared as strings only (a runaway answer must not stall sympy)."""

_PARSE_TIMEOUT_S = 5

_TAG_SPACE = re.compile(r"\s*(<|>|/)\s*")  # some models write "< think >" or "</ think>"
_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_LETTER_REFERENCE = re.compile(r"^\(?([A-Z])\)?$")
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
_LETTER_END = r"(?=[*$)\]}.,;:!?\u3002\uff0e]|[ \t]+[(\[\-\u2013\u2014]|[ \t]*(?:\n|$))"
"""What may follow a choice letter: markup, a bracket, punctuation (full-width too), a space and then an opening
bracket or a dash (``B (oxygen)``, ``C - 42``), or the end of the line; never a word, so that ``I think`` or
``A and B`` is not read as a letter. Letters are capitals: ``answer: b`` states none."""
_BOXED_LETTER = re.compile(r"^(?:(?i:option|choice|answer)\s*:?\s*)?[(\[]?([A-Z])" + _LETTER_END)
_STATED_LETTER = re.compile(
    r"\b(?i:answer|(?:correct|right|best|final)\s+(?:option|choice))(?:\s+(?i:is)\b)?[\s:*$]*"
    r"(?:(?i:option|choice)\s*)?[(\[]?[*$]*([A-Z])" + _LETTER_END
)
""" A letter stated as the answer: ``the answer is (C)``, ``Answer: C``, ``ANSWER: $C$``, ``the answer is: **C**``,
``the correct option is C.``, ``The answer is B (oxygen).``. The letter must end there (:data:`_LETTER_END`), so
that a word is not read as a letter (``Answer: I think it is B`` states none)."""
_INTEGER = re.compile(r"^[+-]?\d+$")
_LAYOUT = re.compile(r"\s+|\\left|\\right|\\[,;:! ]|\^\{?\\circ\}?|\$")
_FRAC = re.compile(r"\\[dt]frac")
_RATIONAL = re.compile(
    r"^(?P<sign>[+-]?)(?:(?P<decimal>\d+(?:\.\d*)?|\.\d+)|\\[dt]?frac\{(?P<num>\d+)\}\{(?P<den>\d+)\}"
    r"|(?P<num2>\d+)/(?P<den2>\d+))$"
)
_MATHRULER_ADDS = re.compile(r"%|\d[eE][+-]?\d|\\emptyset|\\varnothing")
""" Where mathruler's ``grade_answer`` finds equal what math-verify does not: percent signs, e-notation, empty sets."""


def _normalise(response: str) -> str:
    return _TAG_SPACE.sub(r"\1", response.strip())


def answer_region(response: str, *, think_opened: bool = False) -> str | None:
    """The part of ``response`` that may hold the final answer, or None when a think block is never closed.

    With ``think_opened`` (the prompt ends inside a ``<think>`` block) or a ``<think>`` in the response, that is the
    text after the last ``</think>``; otherwise the whole response.
    """
    text = _normalise(response)
    if think_opened or "<think>" in text:
        if "</think>" not in text:
            return None
        return text.rsplit("</think>", 1)[1]
    return text


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` with balanced braces (stripped), or None."""
    starts = [m.end() for m in _BOX.finditer(text)]
    for start in reversed(starts):
        depth = 0
        for i in range(start, len(text)):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                if depth == 0:
                    return text[start:i].strip()
                depth -= 1
        # an unclosed box: try the one before it
    return None


def choice_letter(reference: Any) -> str | None:
    """The letter of a multiple-choice reference (``"C"``, ``"(C)"``, ``"\\text{C}"``), else None."""
    text = _TEXT_WRAPPER.sub(r"\1", str(reference)).replace("$", "").strip()
    match = _LETTER_REFERENCE.match(text)
    return match.group(1) if match else None


def _unwrap(text: str) -> str:
    for _ in range(3):  # nested wrappers: \text{\textbf{C}}
        text = _TEXT_WRAPPER.sub(r"\1", text)
    return text


def _letter_in_box(content: str) -> str | None:
    match = _BOXED_LETTER.match(_unwrap(content).replace("$", "").strip())
    return match.group(1) if match else None


def extract_answer(response: str, reference: Any, *, think_opened: bool = False) -> str | None:
    """The final answer of ``response`` as graded against ``reference`` (a letter for multiple choice), or None."""
    region = answer_region(response, think_opened=think_opened)
    if region is None:
        return None
    boxed = last_boxed(region)
    if choice_letter(reference) is None:
        return boxed
    if boxed is not None:
        return _letter_in_box(boxed)
    stated = _STATED_LETTER.findall(_unwrap(region))
    return stated[-1] if stated else None


def _math_verify_timeouts() -> int | None:
    return _PARSE_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


@functools.lru_cache(maxsize=4096)
def _parse_boxed(text: str, timeout: int | None):
    from math_verify import parse

    return parse("\\boxed{" + text + "}", parsing_timeout=timeout)


def _math_verify_equal(answer: str, reference: str) -> bool:
    from math_verify import verify

    timeout = _math_verify_timeouts()
    gold, pred = _parse_boxed(reference, timeout), _parse_boxed(answer, timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def _spelled_alike(answer: str, reference: str) -> bool:
    """Equal once spacing, ``\\left``/``\\right``, ``\\dfrac``/``\\tfrac`` and degree signs are set aside (a
    sure "equal": math-verify would say so too, only slower)."""
    return _LAYOUT.sub("", _FRAC.sub(r"\\frac", answer)) == _LAYOUT.sub("", _FRAC.sub(r"\\frac", reference))


def _rational(text: str) -> Fraction | None:
    match = _RATIONAL.match(text)
    if match is None:
        return None
    sign = -1 if match.group("sign") == "-" else 1
    if match.group("decimal") is not None:
        return sign * Fraction(match.group("decimal"))
    numerator, denominator = match.group("num") or match.group("num2"), match.group("den") or match.group("den2")
    return sign * Fraction(int(numerator), int(denominator)) if int(denominator) else None


@functools.lru_cache(maxsize=65536)
def answers_match(answer: str, reference: str) -> bool:
    """True when the extracted ``answer`` equals the math ``reference``.

    Sure cases first (the same string up to layout, whole numbers however written, equal rationals written as
    integers, decimals or fractions), then math-verify; where it says no and the answer or reference has a percent sign, e-notation or an
    empty set, mathruler.
    """
    answer, reference = answer.strip(), str(reference).strip()
    if not answer or not reference:
        return False
    if answer == reference or _spelled_alike(answer, reference):
        return True
    if _INTEGER.match(answer) and _INTEGER.match(reference):
        return int(answer) == int(reference)
    ours, theirs = _rational(answer), _rational(reference)
    if ours is not None and ours == theirs:
        return True
    if ours is not None and theirs is not None and ours.denominator == theirs.denominator == 1:
        return False  # two different whole numbers, however written (AMC's references are "142.0")
    if len(answer) > MAX_ANSWER_CHARS:
        return False
    try:
        if _math_verify_equal(answer, reference):
            return True
    except Exception:  # math-verify reports its own failures as "not equal"; anything else is the same verdict
        pass
    if not (_MATHRULER_ADDS.search(answer) or _MATHRULER_ADDS.search(reference)):
        return False
    try:
        return bool(_mathruler_equal(answer, reference))
    except Exception:
        return False


class Judgement(NamedTuple):
    """One graded response: the extracted final answer (None: none found) and whether it is correct."""

    answer: str | None
    correct: bool


def judge(response: str, reference: Any, *, think_opened: bool = False) -> Judgement:
    """Grade ``response`` against ``reference``: see the module docstring for the rules."""
    reference = str(reference).strip()
    answer = extract_answer(response, reference, think_opened=think_opened)
    if answer is None:
        return Judgement(None, False)
    letter = choice_letter(reference)
    correct = answer == letter if letter is not None else answers_match(answer, reference)
    return Judgement(answer, correct)


def format_score(response: str, *, think_opened: bool = False) -> float:
    """1.0 for a single ``<think>...</think>`` block followed by a boxed answer, else 0.0.

    With ``think_opened`` the prompt already opened the block, so the response must close it (once) without opening
    another.
    """
    response = _normalise(response)
    opened = 0 if think_opened else 1
    if not think_opened and not response.startswith("<think>"):
        return 0.0
    if response.count("<think>") != opened or response.count("</think>") != 1:
        return 0.0
    return 1.0 if last_boxed(response.split("</think>", 1)[1]) is not None else 0.0


def accuracy_score(response: str, ground_truth: str, *, think_opened: bool = False) -> float:
    """1.0 when :func:`judge` finds the response correct, else 0.0."""
    return 1.0 if judge(response, ground_truth, think_opened=think_opened).correct else 0.0


def grade(
    response: str, ground_truth: str, format_weight: float = 0.1, *, think_opened: bool = False
) -> dict[str, float]:
    """Score one response: ``{"overall", "format", "accuracy"}``."""
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    fmt = format_score(response, think_opened=think_opened)
    acc = accuracy_score(response, ground_truth, think_opened=think_opened)
    return {"overall": (1.0 - format_weight) * acc + format_weight * fmt, "format": fmt, "accuracy": acc}


def compute_score(
    reward_inputs: list[dict[str, Any]], format_weight: float = 0.1, think_opened: bool = False
) -> list[dict[str, float]]:
    """EasyR1 batch reward function: ``reward_inputs`` are dicts with ``response`` and ``ground_truth``.

    ``format_weight`` and ``think_opened`` come from ``worker.reward.reward_function_kwargs``; set ``think_opened``
    when the chat template itself opens the ``<think>`` block (then pass the same to the evaluation, which finds it
    out from the prompt).
    """
    return [
        grade(item["response"], item["ground_truth"], format_weight, think_opened=think_opened)
        for item in reward_inputs
    ]
