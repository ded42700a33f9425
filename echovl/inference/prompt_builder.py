"""Prompts built exactly as EasyR1's ``RLHFDataset`` builds them in training (pinned commit b44b311b).

For a problem ``q`` with images ``I`` from a benchmark file:

1. ``text = Template(format_prompt.strip()).render(content=q)`` when a format prompt (``data.format_prompt``) is set;
2. messages: ``[{"role": "user", "content": text}]`` for a file without an image column; with one, the content is a
   list that alternates ``{"type": "text"}`` parts and one ``{"type": "image"}`` per ``<image>`` placeholder;
3. ``prompt = apply_chat_template(messages, add_generation_prompt=True, tokenize=False)`` (the processor's for a file
   with images, else the tokenizer's);
4. images: opened, shrunk to at most ``max_pixels`` then grown to at least ``min_pixels`` pixels (aspect kept,
   sides truncated to integers), converted to RGB (EasyR1's ``data.min_pixels`` / ``data.max_pixels``);
5. ``token_ids = tokenizer.encode(prompt, add_special_tokens=False)`` (EasyR1's ``raw_prompt_ids``, what its vLLM
   rollout receives, one ``<|image_pad|>`` per image); the model's input ids come from
   ``processor(images, [prompt], add_special_tokens=False)`` (image placeholders expanded) or
   ``tokenizer([prompt], add_special_tokens=False)``.

A *continuation* (:meth:`PromptBuilder.continuation`) is a prompt followed by the start of the assistant's response,
given as token ids: the model goes on from there (the analyses let a model answer from edited reasoning this way).
Its ids are the prompt's ids followed by exactly those ids, for every backend.

EasyR1 is not needed; ``tests/test_inference_prompts.py`` checks the ids against ``RLHFDataset`` when it is installed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..images import open_image
from .loading import InferenceError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "Prompt",
    "PromptBuilder",
    "resize_image",
]

DEFAULT_MIN_PIXELS = 262144
"""EasyR1's ``data.min_pixels`` default (also the Geometry3K configs')."""
DEFAULT_MAX_PIXELS = 4194304
"""EasyR1's ``data.max_pixels`` default (also the Geometry3K configs')."""
IMAGE_PLACEHOLDER = "<image>"


def resize_image(image: Any, min_pixels: int | None, max_pixels: int | None):
    """An image (PIL image, file bytes, ``{"bytes"}`` or a path) sized as EasyR1's training sees it, in RGB."""
    image = open_image(image)
    for limit, too_far in ((max_pixels, lambda area, lim: area > lim), (min_pixels, lambda area, lim: area < lim)):
        area = image.width * image.height
        if limit is not None and too_far(area, limit):
            scale = math.sqrt(limit / area)
            image = image.resize((int(image.width * scale), int(image.height * scale)))
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class Prompt:
    """One prompt, ready for any backend."""

    text: str
    """The chat-templated prompt (image placeholders not expanded)."""
    token_ids: tuple[int, ...]
    """``tokenizer.encode(text, add_special_tokens=False)``: EasyR1's ``raw_prompt_ids``, vLLM's input."""
    images: tuple | None = None
    """The resized RGB images (PIL), or None for a text prompt."""
    multimodal: bool = False
    """True when the prompt goes through the processor (e.g. its benchmark file has an image column)."""
    length: int | None = None
    """Tokens the model reads (image placeholders expanded); None: ``len(token_ids)``."""
    prefix_ids: tuple[int, ...] = ()
    """For a continuation: the ids the assistant's response starts with (already the last ids of ``token_ids``)."""
    prefix_text: str = ""
    """For a continuation: the text of ``prefix_ids`` (already the end of ``text``)."""

    @property
    def input_length(self) -> int:
        """Tokens of context the prompt takes (with the image placeholders expanded)."""
        return len(self.token_ids) if self.length is None else self.length

    @property
    def chat_text(self) -> str:
        """The chat-templated prompt without a continuation's response prefix."""
        return self.text[: len(self.text) - len(self.prefix_text)] if self.prefix_text else self.text

    @property
    def think_opened(self) -> bool:
        """True when the prompt itself opens a ``<think>`` block (the response must close it before the answer);
        a continuation's prefix does not count (it is part of the response)."""
        return self.chat_text.rstrip().endswith("<think>")


class PromptBuilder:
    """Turns a problem (and its images) into a :class:`Prompt` the way EasyR1 does in training.

    ``format_prompt`` is the Jinja template's text (the file ``data.format_prompt`` names), None for the bare
    problem; ``min_pixels`` / ``max_pixels`` are ``data.min_pixels`` / ``data.max_pixels``.
    """

    def __init__(
        self,
        tokenizer,
        processor=None,
        *,
        format_prompt: str | None = None,
        min_pixels: int | None = DEFAULT_MIN_PIXELS,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.tokenizer = tokenizer
        self.processor = processor
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self._template = None
        if format_prompt:
            from jinja2 import Template

            self._template = Template(format_prompt.strip())

    def messages(self, problem: str, multimodal: bool) -> list[dict]:
        """The chat messages of ``problem``: a string content, or text/image parts when ``multimodal``."""
        text = self._template.render(content=problem) if self._template is not None else problem
        if not multimodal:
            return [{"role": "user", "content": text}]
        content: list[dict] = []
        for i, part in enumerate(text.split(IMAGE_PLACEHOLDER)):
            if i:
                content.append({"type": "image"})
            if part:
                content.append({"type": "text", "text": part})
        return [{"role": "user", "content": content}]

    def build(self, problem: str, images: Sequence[Any] | None = None, *, multimodal: bool | None = None) -> Prompt:
        """The prompt of ``problem``; ``multimodal`` defaults to ``images is not None``."""
        multimodal = images is not None if multimodal is None else multimodal
        messages = self.messages(problem, multimodal)
        if multimodal:
            if self.processor is None:
                raise InferenceError(
                    "the problem has images but the model has no image processor (a text-only model?)"
                )
            text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            resized = tuple(resize_image(image, self.min_pixels, self.max_pixels) for image in images or ())
        else:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            resized = None
        ids = tuple(self.tokenizer.encode(text, add_special_tokens=False))
        length = None
        if resized:  # the processor expands each image placeholder to the image's tokens
            length = len(self.processor(list(resized), [text], add_special_tokens=False)["input_ids"][0])
        return Prompt(text, ids, resized if resized else None, multimodal, length)

    def continuation(self, prompt: Prompt, prefix_ids: Sequence[int]) -> Prompt:
        """``prompt`` followed by ``prefix_ids``, the start of the assistant's response: a backend generates what
        comes after it. The grader then reads ``prefix_text + generated`` as the response (``think_opened`` is the
        prompt's own)."""
        if prompt.prefix_ids:
            raise InferenceError("the prompt is a continuation already; continue the original prompt instead")
        ids = tuple(int(i) for i in prefix_ids)
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
        length = None if prompt.length is None else prompt.length + len(ids)
        return dataclasses.replace(
            prompt,
            text=prompt.text + text,
            token_ids=prompt.token_ids + ids,
            length=length,
            prefix_ids=ids,
            prefix_text=text,
        )

    def model_inputs(self, prompts: Sequence[Prompt]) -> dict:
        """Left-padded tensors for Hugging Face ``generate`` (``input_ids``, ``attention_mask``, and
        ``pixel_values`` / ``image_grid_thw`` for images), as ``RLHFDataset`` tokenizes one prompt."""
        if any(p.multimodal for p in prompts):
            images = [image for p in prompts for image in p.images or ()]
            tokenizer = self.processor.tokenizer
            side, tokenizer.padding_side = tokenizer.padding_side, "left"
            try:
                inputs = self.processor(
                    images or None,
                    [p.chat_text for p in prompts],
                    add_special_tokens=False,
                    padding=True,
                    return_tensors="pt",
                )
            finally:
                tokenizer.padding_side = side
            inputs = dict(inputs)
            if any(p.prefix_ids for p in prompts):  # continuations: the prefix ids exactly, after the expanded prompt
                rows = [
                    ids[mask.bool()].tolist() + list(p.prefix_ids)
                    for ids, mask, p in zip(inputs["input_ids"], inputs["attention_mask"], prompts)
                ]
                inputs["input_ids"], inputs["attention_mask"] = _left_padded(rows, self._pad_id())
            return inputs
        ids, mask = _left_padded([p.token_ids for p in prompts], self._pad_id())
        return {"input_ids": ids, "attention_mask": mask}

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        return pad if pad is not None else 0


def _left_padded(rows: Sequence[Sequence[int]], pad: int):
    """``(input_ids, attention_mask)``, [len(rows), longest] long tensors, each row right-aligned."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, values in enumerate(rows):
        if len(values):
            ids[row, width - len(values) :] = torch.tensor(list(values), dtype=torch.long)
            mask[row, width - len(values) :] = 1
    return ids, mask
