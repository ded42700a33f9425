"""The options the evaluation and the analyses share, declared once: the model run (output folder, backend,
sampling, hardware), the prompt as in training (``--config`` reads the training YAML), the intervals, progress bars.

:class:`ModelRunConfig` is the base of :class:`echovl.eval.EvalConfig` and
:class:`echovl.analysis.common.AnalysisConfig`; :class:`TrainingConfigFile` is their ``--config`` (parsed beside
them: its values become the prompt options' defaults, :mod:`echovl.cli`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from ..cli import option, progress_option
from ..inference import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, PromptBuilder
from .benchmarks import EvalError

__all__ = ["DEFAULT_FORMAT_PROMPT", "GENERATION", "HARDWARE", "ModelRunConfig", "TrainingConfigFile"]

DEFAULT_FORMAT_PROMPT = Path(__file__).resolve().parents[2] / "configs" / "format_prompt" / "math_think.jinja"
"""The format prompt of the repository's training configs (``data.format_prompt``)."""

GENERATION = "generation"
HARDWARE = "hardware"
PROMPT = "prompt (as in training; a flag beats --config)"
INTERVALS = "intervals"


def format_prompt_file(value: str) -> str | None:
    """``--format-prompt``: a Jinja file, or ``none`` (any case) for the bare problem."""
    return None if value.lower() == "none" else value


@dataclass
class TrainingConfigFile:
    """``--config``: the training YAML whose values the prompt options (and the analyses' step delimiters) take."""

    config: str | None = option(
        None,
        settings_file="the training config",
        group=PROMPT,
        help="the training YAML: the prompt options it sets default to its values; relative paths in it are read "
        "from the working directory, as EasyR1 reads them",
    )


@dataclass(kw_only=True)
class ModelRunConfig:
    """What the evaluation and the analyses share (each adds its own fields and checks, and checks its sampling)."""

    error: ClassVar[type[EvalError]] = EvalError
    """What a bad value raises (the command prints it on one line, exit status 1)."""

    out: Path = option(help="output folder, created if needed")
    backend: Literal["auto", "vllm", "transformers"] = option(
        "auto", group=GENERATION, help="auto: vLLM when installed and a GPU is visible, else transformers"
    )
    temperature: float = option(0.6, group=GENERATION, help="sampling temperature")
    top_p: float = option(1.0, group=GENERATION, help="nucleus sampling: the smallest set of tokens of this mass")
    max_new_tokens: int = option(8192, group=GENERATION, help="most tokens per response")
    seed: int = option(0, group=GENERATION, help="sampling seed")
    limit: int | None = option(None, help="only the first N problems of each file (default: all)")
    batch_size: int = option(16, group=GENERATION, help="transformers backend: sequences per generate batch")
    format_prompt: str | None = option(
        str(DEFAULT_FORMAT_PROMPT),
        type=format_prompt_file,
        config_key="data.format_prompt",
        group=PROMPT,
        help="Jinja template applied to each problem, or none: the bare problem (default: "
        f"{DEFAULT_FORMAT_PROMPT.relative_to(DEFAULT_FORMAT_PROMPT.parents[2])})",
    )
    min_pixels: int | None = option(
        DEFAULT_MIN_PIXELS, config_key="data.min_pixels", group=PROMPT, help="images are resized to at least this"
    )
    max_pixels: int | None = option(
        DEFAULT_MAX_PIXELS, config_key="data.max_pixels", group=PROMPT, help="and to at most this many pixels"
    )
    prompt_key: str = option("problem", config_key="data.prompt_key", group=PROMPT, help="problem column")
    answer_key: str = option("answer", config_key="data.answer_key", group=PROMPT, help="answer column")
    image_key: str = option("images", config_key="data.image_key", group=PROMPT, help="image column")
    bootstrap: int = option(10000, group=INTERVALS, help="bootstrap resamples over problems (at least 100)")
    confidence: float = option(0.95, group=INTERVALS, help="interval level")
    show_progress: bool | None = progress_option()
    device: str | None = option(
        None, group=HARDWARE, help="where the transformers model runs: cuda or cpu (default: cuda if visible)"
    )
    tensor_parallel_size: int | None = option(None, group=HARDWARE, help="vLLM: GPUs per model (default: all)")
    gpu_memory_utilization: float = option(
        0.85, group=HARDWARE, help="vLLM: the share of GPU memory for weights and KV cache"
    )

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        if self.backend not in ("auto", "vllm", "transformers"):
            raise self.error(f"unknown backend {self.backend!r} (auto, vllm or transformers)")
        for name in ("limit", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise self.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.bootstrap < 100:
            raise self.error(f"--bootstrap must be >= 100 resamples, got {self.bootstrap}")
        if not 0 < self.confidence < 1:
            raise self.error(f"--confidence must be in (0, 1), got {self.confidence}")
        if self.format_prompt is not None and not Path(self.format_prompt).is_file():
            raise self.error(f"format prompt {self.format_prompt} not found (pass --format-prompt FILE or none)")

    def format_prompt_text(self) -> str | None:
        """The format prompt's Jinja text (None: the bare problem)."""
        return Path(self.format_prompt).read_text(encoding="utf-8") if self.format_prompt else None

    def prompt_builder(self, tokenizer, processor) -> PromptBuilder:
        """Prompts as training builds them, with these settings' format prompt and image sizes."""
        return PromptBuilder(
            tokenizer,
            processor,
            format_prompt=self.format_prompt_text(),
            min_pixels=self.min_pixels,
            max_pixels=self.max_pixels,
        )

    def backend_options(self, max_images: int) -> dict[str, Any]:
        """The keyword arguments of :func:`echovl.inference.load_backend` these settings give; ``max_images``: the
        most images of one prompt (vLLM's ``limit_mm_per_prompt``)."""
        return dict(
            batch_size=self.batch_size,
            device=self.device,
            tensor_parallel_size=self.tensor_parallel_size,
            max_images=max_images,
            show_progress=sys.stderr.isatty() if self.show_progress is None else self.show_progress,
            engine_kwargs={"gpu_memory_utilization": self.gpu_memory_utilization, "seed": self.seed},
        )
