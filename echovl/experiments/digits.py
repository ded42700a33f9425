"""A small verifiable visual task: a 28 x 28 picture of two seven-segment digits; the answer is their sum.

Every problem has a reference solution in step-by-step lines, graded like the real tasks (a ``<think>`` block, then
``\\boxed{}``, :func:`echovl.reward.math.grade`)::

    <think>
    a = 3.
    b = 5.
    3 + 5 = 8.
    </think>
    \\boxed{8}

Reading a digit is the uncertain part for a tiny model, so the "a = ..." and "b = ..." steps are where its
entropy is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["IMAGE_SIZE", "QUESTION", "DigitProblem", "digit_image", "make_problems", "solution"]

IMAGE_SIZE = 28
"""Side of the square picture in pixels: one 2 x 2 patch block of Qwen2.5-VL, i.e. a single image token."""

QUESTION = "Add the two digits in the image."

# segments lit per digit: a top, b upper right, c lower right, d bottom, e lower left, f upper left, g middle
_SEGMENTS = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}
_WIDTH, _HEIGHT, _STROKE = 10, 22, 3


@dataclass(frozen=True)
class DigitProblem:
    """One problem: the two digits and the jitter of their drawing (pixels, per digit)."""

    a: int
    b: int
    shift: tuple[int, int, int, int] = (0, 0, 0, 0)

    @property
    def answer(self) -> str:
        return str(self.a + self.b)


def _segment_boxes(x: int, y: int) -> dict[str, tuple[int, int, int, int]]:
    w, h, t, mid = _WIDTH, _HEIGHT, _STROKE, _HEIGHT // 2
    return {
        "a": (x, y, x + w - 1, y + t - 1),
        "b": (x + w - t, y, x + w - 1, y + mid),
        "c": (x + w - t, y + mid, x + w - 1, y + h - 1),
        "d": (x, y + h - t, x + w - 1, y + h - 1),
        "e": (x, y + mid, x + t - 1, y + h - 1),
        "f": (x, y, x + t - 1, y + mid),
        "g": (x, y + mid - t // 2, x + w - 1, y + mid - t // 2 + t - 1),
    }


def digit_image(problem: DigitProblem):
    """The picture of a problem: digit ``a`` on the left, ``b`` on the right, black on white."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), "white")
    draw = ImageDraw.Draw(image)
    dx_a, dy_a, dx_b, dy_b = problem.shift
    for digit, x, y in ((problem.a, 2 + dx_a, 3 + dy_a), (problem.b, 16 + dx_b, 3 + dy_b)):
        boxes = _segment_boxes(x, y)
        for segment in _SEGMENTS[digit]:
            draw.rectangle(boxes[segment], fill="black")
    return image


def solution(problem: DigitProblem) -> str:
    """The reference response: one step per line, then the boxed sum."""
    a, b = problem.a, problem.b
    return f"<think>\na = {a}.\nb = {b}.\n{a} + {b} = {a + b}.\n</think>\n\\boxed{{{a + b}}}"


def make_problems(count: int, seed: int, *, jitter: int = 1) -> list[DigitProblem]:
    """``count`` random problems (digits uniform in 0..9, each digit shifted by up to ``jitter`` pixels)."""
    rng = random.Random(seed)
    return [
        DigitProblem(rng.randrange(10), rng.randrange(10), tuple(rng.randint(-jitter, jitter) for _ in range(4)))
        for _ in range(count)
    ]
