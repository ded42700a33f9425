"""A (vision-)language model loaded for inference, with its tokenizer, processor and lookup tables.

A model folder is a vision-language model when its config has a ``vision_config`` (loaded with
``AutoModelForImageTextToText``, its processor with ``AutoProcessor``), else a causal LM (``AutoModelForCausalLM``, no
processor). It runs in eval mode on CUDA when visible (bfloat16), else on the CPU (float32).

The vision tokens (:func:`echovl.steps.vision_table`: Qwen's ``<|image_pad|>``, ``<|vision_start|>``, ...) of a
vision-language model are never sampled, as EasyR1's rollout never samples an image placeholder (a forward over a
response holding one would read it as an image slot), and are masked out of the entropy; a text-only model has none
(its tokenizer may hold them, unused, as Qwen2.5's does: EasyR1 leaves them alone there too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "InferenceError",
    "LoadedModel",
    "context_length",
    "is_hub_name",
    "load_model",
    "load_processing",
    "vision_token_ids",
]


class InferenceError(ValueError):
    """Bad input to inference (a model folder, a prompt, a sampling setting): the message says which and why.

    The commands' own errors (``EvalError``, ``AnalysisError``) subclass it; they catch it to report one line.
    """


_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_name(text: str) -> bool:
    """Whether ``text`` is spelled like a hub repository, ``owner/name`` (a model or a dataset); a path that exists
    locally is the caller's to prefer."""
    return bool(_HUB_NAME.match(text))


def context_length(config: Any) -> int | None:
    """The model's context length (``max_position_embeddings``, of the text model for a VLM), or None."""
    for cfg in (getattr(config, "text_config", None), config):
        value = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        if value:
            return int(value)
    return None


def load_processing(model_path: str | Path):
    """``(tokenizer, processor)`` of a model folder; ``processor`` is None for a text-only model."""
    from transformers import AutoConfig, AutoProcessor, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(model_path))
        tokenizer = AutoTokenizer.from_pretrained(str(model_path))
        processor = None
        if hasattr(config, "vision_config"):
            processor = AutoProcessor.from_pretrained(str(model_path))
            if not hasattr(processor, "image_processor"):
                processor = None
    except (OSError, ValueError, KeyError) as exc:
        raise InferenceError(f"cannot load the tokenizer/processor of {model_path}: {exc}") from exc
    return tokenizer, processor


def vision_token_ids(tokenizer, processor) -> list[int]:
    """The vision tokens never sampled and masked out of the entropy: :func:`echovl.steps.vision_table`'s for a
    model with an image processor, none for a text-only model (module docstring)."""
    from ..steps import vision_table

    return [] if processor is None else vision_table(tokenizer).nonzero().flatten().tolist()


@dataclass
class LoadedModel:
    """A transformers model ready for inference, with its tokenizer and processor and the lookup tables of
    :mod:`echovl.steps` made once."""

    model: Any
    """An ``AutoModelForImageTextToText`` or ``AutoModelForCausalLM``."""
    tokenizer: Any
    processor: Any = None
    """The multimodal processor; None for a text-only model."""
    path: str = ""
    """Where the model came from (shown in messages)."""
    tables: dict = field(default_factory=dict, repr=False)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def is_vlm(self) -> bool:
        return self.processor is not None

    @property
    def context(self) -> int | None:
        """Most tokens of prompt + response (:func:`context_length`)."""
        return context_length(self.model.config)

    def _table(self, key, make):
        if key not in self.tables:
            self.tables[key] = make()
        return self.tables[key]

    def delimiter_table(self, delimiters) -> Any:
        """:func:`echovl.steps.delimiter_table` of ``delimiters``."""
        from ..steps import delimiter_table

        return self._table(
            ("delimiters", tuple(delimiters)), lambda: delimiter_table(self.tokenizer, tuple(delimiters))
        )

    def special_table(self) -> Any:
        """:func:`echovl.steps.special_table`: the tokens that are not text."""
        from ..steps import special_table

        return self._table("special", lambda: special_table(self.tokenizer))

    def vision_ids(self) -> list[int]:
        """:func:`vision_token_ids` of the model."""
        return self._table("vision", lambda: vision_token_ids(self.tokenizer, self.processor))


def load_model(path: str | Path, *, device: str | None = None, dtype: Any = None) -> LoadedModel:
    """The model, tokenizer and processor of a model folder (or hub name) in eval mode: on ``device`` (default CUDA
    when visible, else CPU) in ``dtype`` (default bfloat16 on CUDA, float32 on CPU). :class:`InferenceError` when
    they cannot be loaded."""
    import torch
    from transformers import AutoConfig

    tokenizer, processor = load_processing(path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        if hasattr(AutoConfig.from_pretrained(str(path)), "vision_config"):
            from transformers import AutoModelForImageTextToText as auto_class
        else:
            from transformers import AutoModelForCausalLM as auto_class
        model = auto_class.from_pretrained(str(path), dtype=dtype).to(device).eval()
    except (OSError, ValueError, KeyError) as exc:
        raise InferenceError(f"cannot load the model from {path}: {exc}") from exc
    return LoadedModel(model, tokenizer, processor, str(path))
