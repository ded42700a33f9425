"""Generation: ``backend.generate(prompts, sampling, seeds=...) -> texts``, ``sampling.n`` texts per prompt.

- :class:`TransformersBackend`: Hugging Face ``generate`` on a :class:`~echovl.inference.loading.LoadedModel`, in
  left-padded batches of ``batch_size`` sequences (prompts sorted by length, each repeated ``n`` times); its
  :meth:`~TransformersBackend.sample` is one such batch with one seed, giving the response ids (the demo mines them,
  the CPU experiment evaluates with it).
- :class:`~echovl.inference.vllm_backend.VLLMBackend`: vLLM, the second implementation of :class:`Backend`.

Both sample from plain ``softmax(logits / temperature)`` with top-p (no top-k, no repetition penalty, whatever the
model's generation defaults say), stop at the model's end-of-sequence tokens, never emit the vision tokens of a
vision-language model (as EasyR1's rollout never emits an image placeholder; :mod:`echovl.inference.loading`), cap
``max_new_tokens`` so that prompt + response fit the model's context, and decode with special tokens skipped (as
EasyR1's reward sees responses). ``temperature == 0`` is greedy decoding.

Seeds: vLLM gets one seed per request, so a prompt's samples do not depend on what else is in the call. The
transformers backend seeds each batch from the seeds of its sequences: the same prompts, seeds and ``batch_size``
give the same texts (and greedy decoding the same texts whatever the batches).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .loading import InferenceError, LoadedModel, load_model
from .prompt_builder import Prompt, PromptBuilder

__all__ = ["Backend", "Sampling", "TransformersBackend", "load_backend", "mix_seed", "token_budget"]


@dataclass(frozen=True)
class Sampling:
    """How to sample: ``n`` responses per prompt."""

    n: int = 1
    """Responses per prompt."""
    temperature: float = 0.6
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    max_new_tokens: int = 8192
    """Most tokens per response (less where the model's context ends sooner)."""
    seed: int = 0
    """Base seed; backends mix it with the per-prompt seeds."""

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InferenceError(f"samples per prompt must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise InferenceError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InferenceError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise InferenceError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Backend(Protocol):
    """What the evaluation and the analyses need from a generator."""

    name: str
    tokenizer: Any
    processor: Any

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """``sampling.n`` response texts per prompt, in prompt order; ``seeds`` (one per prompt) default to the
        prompt positions."""
        ...


def mix_seed(*values: int | str) -> int:
    """A 31-bit seed from integers (stable across processes and Python versions)."""
    digest = hashlib.sha256(",".join(str(v) for v in values).encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def token_budget(prompt: Prompt, sampling: Sampling, context: int | None) -> int:
    """The most new tokens ``prompt`` may get: ``sampling.max_new_tokens``, capped so that prompt + response fit
    ``context``; :class:`InferenceError` when the prompt leaves no room."""
    budget = sampling.max_new_tokens
    if context is not None:
        budget = min(budget, context - prompt.input_length)
    if budget < 1:
        raise InferenceError(
            f"a prompt of {prompt.input_length} tokens leaves no room in the model's {context}-token context"
        )
    return budget


class TransformersBackend:
    """Hugging Face ``generate`` on ``loaded``, in left-padded batches of ``batch_size`` sequences.

    ``on_batch(done)`` is called after each batch of :meth:`generate` with the number of sequences it generated
    (progress bars).
    """

    name = "transformers"

    def __init__(self, loaded: LoadedModel, *, batch_size: int = 16, on_batch: Callable[[int], None] | None = None):
        if batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        self.loaded = loaded
        self.model, self.tokenizer, self.processor = loaded.model, loaded.tokenizer, loaded.processor
        self.context = loaded.context
        self.batch_size = batch_size
        self.on_batch = on_batch
        self._inputs = PromptBuilder(self.tokenizer, self.processor)  # its model_inputs(): prompts are built already
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in eos:
            eos.append(self.tokenizer.eos_token_id)
        self.eos = eos
        pad = self.tokenizer.pad_token_id
        self.pad = pad if pad is not None else (eos[0] if eos else 0)

    def _generation_config(self, sampling: Sampling, max_new_tokens: int):
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos or None,
            pad_token_id=self.pad,
            suppress_tokens=self.loaded.vision_ids() or None,
            repetition_penalty=1.0,
        )
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        return GenerationConfig(**kwargs)

    def sample(self, prompts: Sequence[Prompt], sampling: Sampling, *, seed: int, logits_processor=None) -> tuple:
        """One batch: ``sampling.n`` sequences of each prompt (prompt after prompt), drawn after
        ``torch.manual_seed(seed)`` (``sampling.seed`` is not used here); ``logits_processor`` (a transformers
        ``LogitsProcessorList``) is added to generation's own.

        Returns the response ids [rows, T] (pad after the end) and the response mask [rows, T] (1 up to and including
        the first end-of-sequence token, within the prompt's token budget: :func:`token_budget`).
        """
        import torch

        rows = [prompt for prompt in prompts for _ in range(sampling.n)]
        budgets = torch.tensor([token_budget(prompt, sampling, self.context) for prompt in rows])
        inputs = self._inputs.model_inputs(rows)
        inputs = {k: v.to(self.loaded.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        config = self._generation_config(sampling, int(budgets.max()))
        torch.manual_seed(seed)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                generation_config=config,
                use_model_defaults=False,  # else the model's own top_k / top_p / repetition penalty would apply
                logits_processor=logits_processor,
            )
        response = out[:, inputs["input_ids"].shape[1] :].cpu()
        positions = torch.arange(response.shape[1]).expand_as(response)
        is_eos = torch.isin(response, torch.tensor(self.eos, dtype=response.dtype))
        end = torch.where(is_eos, positions, response.shape[1]).min(dim=1).values  # the first end-of-sequence token
        mask = positions <= torch.minimum(end, budgets - 1).unsqueeze(1)
        return response.masked_fill(~mask, self.pad), mask.long()

    def decode(self, response, mask) -> list[str]:
        """The texts of :meth:`sample`'s rows, special tokens skipped."""
        return [self.tokenizer.decode(row[: int(m.sum())], skip_special_tokens=True) for row, m in zip(response, mask)]

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        """:meth:`Backend.generate`: batches of :meth:`sample`, each seeded from ``sampling.seed`` and the seeds of
        its sequences."""
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise InferenceError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        for prompt in prompts:  # a prompt too long fails before anything is generated
            token_budget(prompt, sampling, self.context)
        # sequences (prompt, sample), longest prompts first: less padding, same batches for the same prompts
        order = sorted(
            ((i, j) for i in range(len(prompts)) for j in range(sampling.n)),
            key=lambda s: (-prompts[s[0]].input_length, s[0], s[1]),
        )
        one = dataclasses.replace(sampling, n=1)
        texts: list[list[str | None]] = [[None] * sampling.n for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            seed = mix_seed(sampling.seed, *(f"{seeds[i]}.{j}" for i, j in batch))
            response, mask = self.sample([prompts[i] for i, _ in batch], one, seed=seed)
            for text, (i, j) in zip(self.decode(response, mask), batch):
                texts[i][j] = text
            if self.on_batch is not None:
                self.on_batch(len(batch))
        return texts  # type: ignore[return-value]


def load_backend(name: str, model_path: str | Path, **kwargs: Any) -> Backend:
    """``auto`` (vLLM when it is installed and a GPU is visible, else transformers), ``vllm`` or ``transformers``.

    ``kwargs`` go to the backend's constructor (``device`` to the transformers backend's
    :func:`~echovl.inference.loading.load_model`); those the other backend takes are dropped.
    """
    from .vllm_backend import VLLMBackend, vllm_available

    if name == "auto":
        name = "vllm" if vllm_available() else "transformers"
    if name == "vllm":
        allowed = {"tokenizer", "processor", "tensor_parallel_size", "dtype", "max_images", "show_progress"}
        engine = kwargs.pop("engine_kwargs", {}) or {}
        return VLLMBackend(model_path, **{k: v for k, v in kwargs.items() if k in allowed}, **engine)
    if name == "transformers":
        loaded = load_model(model_path, device=kwargs.get("device"))
        return TransformersBackend(loaded, batch_size=kwargs.get("batch_size", 16), on_batch=kwargs.get("on_batch"))
    raise InferenceError(f"unknown backend {name!r} (auto, vllm or transformers)")
