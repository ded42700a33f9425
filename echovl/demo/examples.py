"""Shipped example problems and the demo's default model: a tiny offline Qwen2.5-VL that knows them.

A freshly initialised tiny model (:func:`echovl.testing.build_tiny_qwen2_5_vl`) writes random tokens: it never
boxes an answer, so no rollout is ever verified and there is no EchoClip to show. The demo's default model is
that tiny model fitted for a few seconds on :data:`EXAMPLE_PROBLEMS`, each with two correct solutions that
take different routes and one wrong one. Sampled at temperature 1, its rollouts mix right and wrong answers,
and the step where the solutions branch has the highest entropy: what EchoRL would echo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEMO_MODEL_VERSION",
    "EXAMPLE_PROBLEMS",
    "FORMAT_INSTRUCTION",
    "ExampleProblem",
    "build_demo_model",
    "default_cache_dir",
    "demo_model_dir",
    "format_question",
]

FORMAT_INSTRUCTION = (
    "You FIRST think about the reasoning process as an internal monologue and then provide the final answer. "
    "The reasoning process MUST BE enclosed within <think> </think> tags. The final answer MUST BE put in \\boxed{}."
)
"""EasyR1's math format prompt (``examples/format_prompt/math.jinja``), appended to the question as in training."""

DEMO_MODEL_VERSION = 1
"""Bump when the problems or the fitting change, so cached default models are rebuilt."""


@dataclass(frozen=True)
class ExampleProblem:
    """A geometry-like problem with a diagram (``tiny_image(image_seed)``) and solutions to fit on."""

    question: str
    answer: str
    image_seed: int
    correct: tuple[str, ...]
    wrong: tuple[str, ...]


def _solution(*steps: str, answer: str) -> str:
    return "<think>\n" + "\n".join(steps) + "\n</think>\nThe answer is \\boxed{" + answer + "}."


EXAMPLE_PROBLEMS: tuple[ExampleProblem, ...] = (
    ExampleProblem(
        "In triangle ABC, angle A = 50° and angle B = 60°. Find angle C.",
        "70",
        1,
        correct=(
            _solution("The angles of a triangle sum to 180°.", "So C = 180 - 50 - 60.", "C = 70.", answer="70"),
            _solution("A + B = 50 + 60 = 110.", "The angles sum to 180.", "So C = 180 - 110 = 70.", answer="70"),
        ),
        wrong=(_solution("A + B = 50 + 60 = 110.", "So C = 110 - 50 = 60.", answer="60"),),
    ),
    ExampleProblem(
        "The radius of the circle is 5. Find its diameter.",
        "10",
        2,
        correct=(
            _solution("The diameter is twice the radius.", "So d = 2 × 5 = 10.", answer="10"),
            _solution("d = 2r.", "r = 5, so d = 10.", answer="10"),
        ),
        wrong=(_solution("The diameter is half the radius.", "So d = 5 / 2 = 2.5.", answer="2.5"),),
    ),
    ExampleProblem(
        "A right triangle has legs 3 and 4. Find the hypotenuse.",
        "5",
        3,
        correct=(
            _solution("By Pythagoras, c² = 3² + 4².", "c² = 9 + 16 = 25.", "So c = 5.", answer="5"),
            _solution("This is the 3-4-5 right triangle.", "So the hypotenuse is 5.", answer="5"),
        ),
        wrong=(_solution("The hypotenuse is the sum of the legs.", "So c = 3 + 4 = 7.", answer="7"),),
    ),
    ExampleProblem(
        "Lines AB and CD are parallel and angle 1 = 65°. Find angle 2, its corresponding angle.",
        "65",
        4,
        correct=(
            _solution("Corresponding angles of parallel lines are equal.", "So angle 2 = angle 1 = 65°.", answer="65"),
            _solution("AB is parallel to CD.", "Angle 2 corresponds to angle 1.", "So angle 2 = 65°.", answer="65"),
        ),
        wrong=(_solution("Angle 1 and angle 2 are supplementary.", "So angle 2 = 180 - 65 = 115°.", answer="115"),),
    ),
)


def format_question(question: str, instruction: str | None = FORMAT_INSTRUCTION) -> str:
    """The user message: the question, then the format instruction (if any)."""
    question = question.strip()
    return f"{question} {instruction.strip()}" if instruction and instruction.strip() else question


def _fit(model, processor, problems, *, steps: int, lr: float, seed: int) -> list[float]:
    """Supervised fit on the problems' solutions; a correct solution weighs twice as much as a wrong one."""
    import torch

    from echovl.testing import tiny_image

    tokenizer = processor.tokenizer
    texts, images, weights, prompt_lens = [], [], [], []
    for problem in problems:
        image = tiny_image(problem.image_seed)
        messages = [
            {
                "role": "user",
                "content": [{"type": "image"}, {"type": "text", "text": format_question(problem.question)}],
            }
        ]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_len = len(processor(text=[prompt], images=[image])["input_ids"][0])
        for solution, weight in [(s, 2.0) for s in problem.correct] + [(s, 1.0) for s in problem.wrong]:
            texts.append(prompt + solution + tokenizer.eos_token)
            images.append(image)
            weights.append(weight)
            prompt_lens.append(prompt_len)
    batch = processor(text=texts, images=images, return_tensors="pt", padding=True, padding_side="right")
    # next-token targets; the prompt (with its image tokens) is context, not supervised
    targets = batch["input_ids"][:, 1:]
    supervised = batch["attention_mask"][:, 1:].bool()
    for row, prompt_len in enumerate(prompt_lens):
        supervised[row, : prompt_len - 1] = False
    weights = torch.tensor(weights) / sum(weights)  # the loss is the weighted mean over solutions of their mean NLL
    token_weights = (weights / supervised.sum(dim=1)).unsqueeze(1) * supervised

    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    # constant, then a linear decay to 0 over the last third: settles on the mixture instead of bouncing around it
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, 3.0 * (steps - step) / steps))
    model.train()
    losses = []
    for _ in range(steps):
        logits = model(**batch).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        loss = (nll * token_weights).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    return losses


def build_demo_model(path: str | Path, *, steps: int = 180, lr: float = 1e-2, seed: int = 0) -> Path:
    """Write the demo's default model: the tiny Qwen2.5-VL fitted on :data:`EXAMPLE_PROBLEMS` (CPU, seconds)."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    from echovl.testing import build_tiny_qwen2_5_vl

    path = Path(path)
    build_tiny_qwen2_5_vl(path, seed=seed)
    processor = AutoProcessor.from_pretrained(path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the matrices are tiny: one thread is fastest, and many thrash on a shared CPU
    try:
        losses = _fit(model, processor, EXAMPLE_PROBLEMS, steps=steps, lr=lr, seed=seed)
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(path, safe_serialization=True)
    info = {"version": DEMO_MODEL_VERSION, "steps": steps, "first_loss": losses[0], "last_loss": losses[-1]}
    (path / "echovl_demo.json").write_text(json.dumps(info, indent=2) + "\n")
    return path


def default_cache_dir() -> Path:
    """``$ECHOVL_CACHE_DIR``, else ``$XDG_CACHE_HOME/echovl``, else ``~/.cache/echovl``."""
    import os

    if os.environ.get("ECHOVL_CACHE_DIR"):
        return Path(os.environ["ECHOVL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "echovl"


def demo_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The default model under ``cache_dir``, built on first use (and rebuilt when the version changes)."""
    import shutil
    import tempfile

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache_dir / f"tiny-qwen2_5_vl-demo-v{DEMO_MODEL_VERSION}"
    if (path / "echovl_demo.json").is_file():
        return path
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".building-"))
    try:
        build_demo_model(tmp)
        if not (path / "echovl_demo.json").is_file():  # another process may have finished first
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
