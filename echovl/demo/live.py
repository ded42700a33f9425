"""The live tab's pipeline: sample a group of rollouts, grade them, compute entropy, mine the EchoClip.

Everything here returns data (a trace record, the same structure training writes, see :mod:`echovl.traces`),
so the live tab and the traces tab share one renderer. Nothing here imports gradio: progress is reported
through a plain callable ``progress(fraction, desc=...)`` (``gr.Progress`` is one).

Loading, prompts, sampling and entropy are the inference layer's (:mod:`echovl.inference`): the group is one batch
of :meth:`~echovl.inference.TransformersBackend.sample`, and it is mined exactly as in training: token entropy from
one forward pass per rollout at the sampling temperature (:class:`echovl.inference.EntropyScorer`), "verified" = the
reward's ``accuracy`` >= 1, and the echo step (:class:`echovl.echo.EchoStep`) over one group with the request's
``echo:`` settings (:meth:`LiveRequest.echo_config`; the defaults are training's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import EchoConfig, unescape
from ..echo import EchoStep, verified_flags
from ..images import open_image as load_image
from ..inference import (
    EntropyScorer,
    InferenceError,
    LoadedModel,
    Prompt,
    PromptBuilder,
    Sampling,
    TransformersBackend,
    is_hub_name,
)
from ..inference import load_model as load_inference_model
from ..reward.math import grade
from .examples import FORMAT_INSTRUCTION, format_question

__all__ = [
    "DemoError",
    "LiveRequest",
    "LiveResult",
    "ModelCache",
    "SampledGroup",
    "load_model",
    "mine_group",
    "open_image",
    "parse_delimiters",
    "run_live",
    "sample_group",
]

Progress = Callable[..., Any]

MAX_ROLLOUTS = 64
MAX_NEW_TOKENS = 8192


class DemoError(ValueError):
    """A problem with the user's input; the message is shown in the page as it is."""


def _no_progress(fraction: float, desc: str | None = None) -> None:
    pass


# ---------------------------------------------------------------------------------------------------- inputs


def parse_delimiters(text: str) -> tuple[str, ...]:
    """Delimiters typed one per line, with the ``echo.delimiters`` escapes (:func:`echovl.config.unescape`: ``\\n``
    newline, ``\\t`` tab, ``\\r`` carriage return)."""
    out = tuple(unescape(line) for line in (text or "").splitlines() if line)
    if not out:
        raise DemoError("give at least one step delimiter (one per line; \\n is a newline)")
    return out


def open_image(value: Any):
    """An RGB PIL image from a path, PIL image or array; None for no image. Bad files raise DemoError."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    from PIL import Image

    if isinstance(value, (str, Path)) and not Path(value).is_file():
        raise DemoError(f"image {Path(value).name}: no such file")
    try:
        return load_image(value).convert("RGB")
    except TypeError as error:
        if hasattr(value, "__array__"):
            raise DemoError(f"cannot read the image array: {error}") from None
        raise DemoError(f"cannot use an image of type {type(value).__name__}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        what = f"open the image {Path(value).name}" if isinstance(value, (str, Path)) else "read the image array"
        raise DemoError(f"cannot {what}: {error}") from None


@dataclass
class LiveRequest:
    """One live group: a prompt and how to sample and mine it."""

    question: str
    """The problem text; the format instruction is appended to it."""
    answer: str
    """Reference answer the rollouts are graded against (``echovl.reward.grade``)."""
    image: Any = None
    """Optional image: a path, PIL image or array (ignored, with a note, by text-only models)."""
    num_rollouts: int = 6
    """Rollouts in the group (G)."""
    temperature: float = 1.0
    """Sampling temperature; the entropy is computed at the same temperature."""
    max_new_tokens: int = 256
    """Longest response, in tokens."""
    seed: int = 0
    """Random seed of the sampling."""
    instruction: str = FORMAT_INSTRUCTION
    """Appended to the question (empty for none)."""
    delimiters: tuple[str, ...] = tuple(EchoConfig().delimiters)
    """A token whose text contains one of these ends a step (``echo.delimiters``)."""
    min_step_tokens: int = EchoConfig.min_step_tokens
    """Fewest text tokens of an eligible step (``echo.min_step_tokens``; its default is training's)."""
    scope: str = EchoConfig.scope
    """``all`` mines every group with a verified rollout; ``degenerate`` only all-correct groups (``echo.scope``)."""

    def validate(self) -> None:
        """Check and normalise the fields (numbers typed in a form may arrive as floats or None).

        Raises :class:`DemoError` naming the first bad field.
        """
        if not isinstance(self.question, str) or not self.question.strip():
            raise DemoError("the question is empty")
        if not isinstance(self.answer, str) or not self.answer.strip():
            raise DemoError("the reference answer is empty: it is needed to verify the rollouts")
        self.num_rollouts = _number("number of rollouts", self.num_rollouts, int, 1, MAX_ROLLOUTS)
        self.temperature = _number("temperature", self.temperature, float, 0.0, 10.0, low_open=True)
        self.max_new_tokens = _number("max new tokens", self.max_new_tokens, int, 1, MAX_NEW_TOKENS)
        self.seed = _number("seed", self.seed, int, 0, 2**63 - 1)
        self.min_step_tokens = _number("min step tokens", self.min_step_tokens, int, 1, MAX_NEW_TOKENS)
        self.echo_config()

    def echo_config(self) -> EchoConfig:
        """The mining settings as the ``echo:`` section holds them (checked there: a bad one is a :class:`DemoError`
        naming it)."""
        try:
            return EchoConfig(delimiters=list(self.delimiters), min_step_tokens=self.min_step_tokens, scope=self.scope)
        except ValueError as error:
            raise DemoError(str(error).replace("echo.", "")) from None


def _number(name: str, value, kind: type, low: float, high: float, *, low_open: bool = False):
    try:
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise DemoError(f"{name} must be {'a whole number' if kind is int else 'a number'}, got {value!r}") from None
    if not (low < number if low_open else low <= number) or number > high:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise DemoError(f"{name} must be {bound} and <= {high:g}, got {value!r}")
    return number


# ---------------------------------------------------------------------------------------------------- model


def load_model(path: str, *, device: str | None = None) -> LoadedModel:
    """Load a Qwen2.5-VL / Qwen2-VL (any ``AutoModelForImageTextToText``) or a causal LM, detected by config
    (:func:`echovl.inference.load_model`); a bad path or model folder is a :class:`DemoError`."""
    path = (str(path) if path is not None else "").strip()
    if not path:
        raise DemoError("no model path given")
    local = Path(path).expanduser()
    if not local.exists() and not is_hub_name(path):
        raise DemoError(f"model path {path} does not exist")
    source = str(local) if local.exists() else path
    try:
        loaded = load_inference_model(source, device=device)
    except InferenceError as error:
        raise DemoError(str(error)) from None
    loaded.path = path
    return loaded


class ModelCache:
    """Keeps the last loaded model, so repeated runs on one model load it once."""

    def __init__(self) -> None:
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def get(self, path: str, progress: Progress = _no_progress) -> LoadedModel:
        with self._lock:
            if self._loaded is None or self._loaded.path != (path or "").strip():
                progress(0.0, desc=f"loading {path}")
                self._loaded = None  # free the old model before loading the new one
                self._loaded = load_model(path)
            return self._loaded


# ---------------------------------------------------------------------------------------------------- pipeline


@dataclass
class LiveResult:
    """A live group as a trace record (see :mod:`echovl.traces`), its image, and notes for the page."""

    record: dict
    image: Any
    notes: list[str]


def _prompt(loaded: LoadedModel, user_text: str, image) -> Prompt:
    """The chat prompt of the question (the image first), as the evaluation builds one; a model without a chat
    template reads the question as it is."""
    if loaded.is_vlm or getattr(loaded.tokenizer, "chat_template", None):
        if loaded.is_vlm and not getattr(loaded.processor, "chat_template", None):
            raise DemoError(f"the processor of {loaded.path} has no chat template")
        builder = PromptBuilder(
            loaded.tokenizer, loaded.processor, format_prompt=None, min_pixels=None, max_pixels=None
        )
        images = None if image is None else [image]
        return builder.build(("<image>" if images else "") + user_text, images, multimodal=loaded.is_vlm)
    text = user_text + "\n"
    return Prompt(text, tuple(loaded.tokenizer(text)["input_ids"]))


def _progress_processor(progress: Progress, total: int):
    """A logits processor that leaves the scores alone and reports how many tokens have been sampled."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class _Report(LogitsProcessor):
        def __init__(self) -> None:
            self.done = 0

        def __call__(self, input_ids, scores):
            self.done += 1
            progress(0.05 + 0.6 * self.done / total, desc=f"sampling: token {self.done}/{total}")
            return scores

    return LogitsProcessorList([_Report()])


@dataclass
class SampledGroup:
    """A sampled group before grading: response ids (pad after the end), mask, token entropy, texts."""

    prompt: str
    """The prompt as the model saw it, special tokens removed."""
    response: torch.Tensor
    """[G, T] response token ids."""
    mask: torch.Tensor
    """[G, T] 1 for response tokens (up to and including the end-of-sequence token)."""
    entropy: torch.Tensor
    """[G, T] fp32 token entropy (nats) of the policy at the sampling temperature."""
    texts: list[str]
    """Decoded responses (special tokens removed), as the reward sees them."""
    seconds: tuple[float, float]
    """Time spent sampling and in the entropy forward passes."""


def sample_group(loaded: LoadedModel, request: LiveRequest, image=None, *, progress: Progress = _no_progress):
    """Sample ``request.num_rollouts`` responses in one batch seeded with ``request.seed`` (plain
    ``softmax(logits / T)``, vision tokens never sampled) and their token entropy (one forward pass per rollout)."""
    prompt = _prompt(loaded, format_question(request.question, request.instruction), image)
    progress(0.05, desc=f"sampling {request.num_rollouts} rollouts")
    start = time.perf_counter()
    backend = TransformersBackend(loaded)
    sampling = Sampling(request.num_rollouts, request.temperature, max_new_tokens=request.max_new_tokens)
    response, mask = backend.sample(
        [prompt], sampling, seed=request.seed, logits_processor=_progress_processor(progress, request.max_new_tokens)
    )
    sampled = time.perf_counter() - start
    start = time.perf_counter()
    scorer = EntropyScorer(loaded, temperature=request.temperature, delimiters=request.delimiters)
    entropy = torch.zeros(response.shape, dtype=torch.float32)
    lengths = mask.sum(dim=1).tolist()
    for row, length in enumerate(lengths):
        progress(0.65 + 0.3 * row / len(lengths), desc=f"entropy: rollout {row + 1}/{len(lengths)}")
        entropy[row, :length] = scorer.token_entropy(prompt, response[row, :length].tolist())
    forward = time.perf_counter() - start
    text = loaded.tokenizer.decode(prompt.token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return SampledGroup(text, response, mask, entropy, backend.decode(response, mask), (sampled, forward))


def mine_group(
    loaded: LoadedModel, sampled: SampledGroup, request: LiveRequest, *, train_step: int = 0, group_name: str = "live"
) -> dict:
    """Grade the rollouts (verified = accuracy >= 1), then the echo step as training runs it, on one group: a trace
    record."""
    num = sampled.response.shape[0]
    scores = [grade(text, request.answer) for text in sampled.texts]
    config = request.echo_config()
    tables = loaded.delimiter_table(config.delimiters), loaded.special_table()
    step = EchoStep(loaded.tokenizer, config, tables=tables)
    verified = verified_flags(torch.tensor([s["accuracy"] for s in scores]), config.success_threshold)
    mined = step.mine(sampled.response, sampled.mask, sampled.entropy, verified, torch.zeros(num, dtype=torch.long))
    [(record, _)] = mined.records(
        loaded.tokenizer,
        [0],
        train_step=train_step,
        prompts=[sampled.prompt] * num,
        answers=[request.answer.strip()] * num,
        rewards=[s["overall"] for s in scores],
        accuracy=[s["accuracy"] for s in scores],
        group_names=[group_name] * num,
        source="demo",
    )
    return record


def run_live(
    loaded: LoadedModel,
    request: LiveRequest,
    *,
    progress: Progress = _no_progress,
    train_step: int = 0,
    group_name: str = "live",
) -> LiveResult:
    """Sample, grade, compute entropy, split steps and mine the group's EchoClip; return a trace record."""
    request.validate()
    notes = []
    image = open_image(request.image)
    if image is not None and not loaded.is_vlm:
        notes.append(f"{loaded.path} is a text-only model: the image was ignored.")
        image = None
    if image is not None:
        notes.append(f"image: {image.width}×{image.height} px")
    sampled = sample_group(loaded, request, image, progress=progress)
    progress(0.95, desc="grading and mining the EchoClip")
    record = mine_group(loaded, sampled, request, train_step=train_step, group_name=group_name)
    num = request.num_rollouts
    notes.append(
        f"{num} rollouts sampled in {sampled.seconds[0]:.1f} s; entropy from {num} forward passes in "
        f"{sampled.seconds[1]:.1f} s ({loaded.path}, {loaded.device.type})."
    )
    progress(1.0, desc="done")
    return LiveResult(record=record, image=image, notes=notes)
