"""Generation backends: ``backend.generate(prompts, sampling, seeds=...) -> texts``, ``sampling.n`` texts per prompt.

- :class:`VLLMBackend`: vLLM's ``LLM.generate`` in one call for all the prompts it is given, each prompt a request
  with ``SamplingParams(n, temperature, top_p, max_tokens, seed)`` (token ids as EasyR1's rollout passes them,
  images as ``multi_modal_data``); ``generate(..., n=[...])`` gives each prompt its own sample count, so prompts
  with different ``k`` share one call. vLLM is imported only when this backend is built.
- :class:`TransformersBackend`: Hugging Face ``generate`` on left-padded batches of ``batch_size`` sequences
  (prompts sorted by length, each repeated ``n`` times), for CPU tests and small models.

Both sample from plain ``softmax(logits / temperature)`` with top-p (no top-k, no repetition penalty, whatever the
model's generation defaults say), stop at the model's end-of-sequence tokens, never emit image placeholder tokens (as
EasyR1's rollout), cap ``max_new_tokens`` so that prompt + response fit the model's context, and decode with special
tokens skipped (as EasyR1's reward sees responses). ``temperature == 0`` is greedy decoding.

Seeds: vLLM gets one seed per request, so a prompt's samples do not depend on what else is in the call. The
transformers backend seeds each batch from the seeds of its sequences: the same prompts, seeds and ``batch_size``
give the same texts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .benchmarks import EvalError
from .prompts import Prompt

__all__ = [
    "Backend",
    "Sampling",
    "TransformersBackend",
    "VLLMBackend",
    "build_vllm_requests",
    "context_length",
    "image_token_ids",
    "load_backend",
    "mix_seed",
    "token_budget",
    "vllm_available",
]


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
            raise EvalError(f"samples per prompt must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise EvalError(f"temperature must be >= 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise EvalError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise EvalError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class Backend(Protocol):
    """What the evaluation (and ``echovl.analysis``) needs from a generator."""

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


def context_length(config: Any) -> int | None:
    """The model's context length (``max_position_embeddings``, of the text model for a VLM), or None."""
    for cfg in (getattr(config, "text_config", None), config):
        value = getattr(cfg, "max_position_embeddings", None) if cfg is not None else None
        if value:
            return int(value)
    return None


def token_budget(prompt: Prompt, sampling: Sampling, context: int | None) -> int:
    """The most new tokens ``prompt`` may get: ``sampling.max_new_tokens``, capped so that prompt + response fit
    ``context``; :class:`EvalError` when the prompt leaves no room."""
    budget = sampling.max_new_tokens
    if context is not None:
        budget = min(budget, context - prompt.input_length)
    if budget < 1:
        raise EvalError(
            f"a prompt of {prompt.input_length} tokens leaves no room in the model's {context}-token context"
        )
    return budget


def image_token_ids(tokenizer, processor) -> list[int]:
    """The processor's image and video placeholder ids, which the backends never sample (none without a processor)."""
    if processor is None:
        return []
    ids = []
    for name in ("image_token", "video_token"):
        token = getattr(processor, name, None)
        if token:
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is not None and token_id != tokenizer.unk_token_id:
                ids.append(token_id)
    return ids


# ------------------------------------------------------------------------------------------------------- vLLM


def vllm_available() -> bool:
    """True when vLLM can be imported and a CUDA device is visible."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def build_vllm_requests(
    prompts: Sequence[Prompt],
    sampling: Sampling,
    seeds: Sequence[int],
    *,
    sampling_params: Callable[..., Any],
    context: int | None,
    logit_bias: dict[int, float] | None,
    n: Sequence[int] | None = None,
) -> tuple[list[dict], list[Any]]:
    """vLLM inputs and one ``SamplingParams`` per prompt (``sampling_params`` is vLLM's class, or a fake in tests).

    An input is ``{"prompt_token_ids": ids}`` plus ``{"multi_modal_data": {"image": images}}`` for a prompt with
    images; its parameters carry ``n`` (the prompt's entry of ``n``, default ``sampling.n``; 1 when greedy: the
    caller repeats the one text), the temperature (0: greedy), ``top_p``, ``max_tokens`` (capped by the context),
    the prompt's own seed and the image-token bias.
    """
    counts = [sampling.n] * len(prompts) if n is None else list(n)
    if len(counts) != len(prompts) or min(counts, default=1) < 1:
        raise EvalError(f"{len(counts)} sample counts for {len(prompts)} prompts, each must be >= 1")
    inputs, params = [], []
    for prompt, seed, count in zip(prompts, seeds, counts, strict=True):
        request: dict[str, Any] = {"prompt_token_ids": list(prompt.token_ids)}
        if prompt.images:
            request["multi_modal_data"] = {"image": list(prompt.images)}
        inputs.append(request)
        params.append(
            sampling_params(
                n=1 if sampling.greedy else count,  # greedy samples are all the same (vLLM refuses n > 1)
                temperature=0.0 if sampling.greedy else sampling.temperature,
                top_p=1.0 if sampling.greedy else sampling.top_p,
                max_tokens=token_budget(prompt, sampling, context),
                seed=mix_seed(sampling.seed, seed),
                logit_bias=logit_bias,
                skip_special_tokens=True,
            )
        )
    return inputs, params


class VLLMBackend:
    """vLLM generation (GPU). ``engine_kwargs`` go to ``vllm.LLM`` (e.g. ``gpu_memory_utilization``)."""

    name = "vllm"
    per_prompt_n = True
    """``generate`` takes ``n=``: a sample count per prompt."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokenizer=None,
        processor=None,
        tensor_parallel_size: int | None = None,
        dtype: str = "bfloat16",
        max_images: int = 1,
        show_progress: bool = True,
        **engine_kwargs: Any,
    ):
        try:
            import vllm
        except ImportError as exc:
            raise EvalError("--backend vllm needs vLLM (pip install vllm, on a machine with a GPU)") from exc
        import torch

        from .prompts import load_processing

        if tokenizer is None:
            tokenizer, processor = load_processing(model_path)
        self.tokenizer, self.processor = tokenizer, processor
        self.show_progress = show_progress
        self._vllm = vllm
        if processor is not None:
            engine_kwargs.setdefault("limit_mm_per_prompt", {"image": max(1, max_images)})
        self.llm = vllm.LLM(
            model=str(model_path),
            tensor_parallel_size=tensor_parallel_size or max(1, torch.cuda.device_count()),
            dtype=dtype,
            trust_remote_code=False,
            **engine_kwargs,
        )
        self.context = self._context_length(model_path)
        image_ids = image_token_ids(tokenizer, processor)
        self.logit_bias = {i: -100.0 for i in image_ids} or None  # EasyR1's rollout: never sample an image token

    def close(self) -> None:
        """Free the engine and its GPU memory (best effort: vLLM keeps some process-wide state)."""
        import gc

        import torch

        self.llm = None
        try:
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
        except Exception:
            pass
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _context_length(self, model_path) -> int | None:
        engine = getattr(self.llm, "llm_engine", None)
        length = getattr(getattr(engine, "model_config", None), "max_model_len", None)
        if length:
            return int(length)
        from transformers import AutoConfig

        return context_length(AutoConfig.from_pretrained(str(model_path)))

    def generate(
        self,
        prompts: Sequence[Prompt],
        sampling: Sampling,
        *,
        seeds: Sequence[int] | None = None,
        n: Sequence[int] | None = None,
    ) -> list[list[str]]:
        """``n[i]`` texts for prompt ``i`` (default ``sampling.n`` for every prompt), all in one ``LLM.generate``
        call."""
        if not prompts:
            return []
        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        counts = [sampling.n] * len(prompts) if n is None else list(n)
        inputs, params = build_vllm_requests(
            prompts,
            sampling,
            seeds,
            sampling_params=self._vllm.SamplingParams,
            context=self.context,
            logit_bias=self.logit_bias,
            n=counts,
        )
        outputs = self.llm.generate(inputs, params, use_tqdm=self.show_progress)
        texts = [[completion.text for completion in output.outputs] for output in outputs]
        return [group * count if sampling.greedy else group for group, count in zip(texts, counts, strict=True)]


# ----------------------------------------------------------------------------------------------- transformers


class TransformersBackend:
    """Hugging Face ``generate`` on left-padded batches of ``batch_size`` sequences.

    ``device`` defaults to CUDA when visible, else CPU; ``dtype`` to bfloat16 on CUDA, float32 on CPU.
    ``on_batch(done)`` is called after each batch with the number of sequences it generated (progress bars).
    """

    name = "transformers"

    def __init__(
        self,
        model_path: str | Path,
        *,
        tokenizer=None,
        processor=None,
        batch_size: int = 16,
        device: str | None = None,
        dtype: Any = None,
        on_batch: Callable[[int], None] | None = None,
    ):
        import torch
        from transformers import AutoConfig

        from .prompts import PromptBuilder, load_processing

        if batch_size < 1:
            raise EvalError(f"batch_size must be >= 1, got {batch_size}")
        if tokenizer is None:
            tokenizer, processor = load_processing(model_path)
        self.tokenizer, self.processor = tokenizer, processor
        self.batch_size = batch_size
        self.on_batch = on_batch
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        config = AutoConfig.from_pretrained(str(model_path))
        try:
            if hasattr(config, "vision_config"):
                from transformers import AutoModelForImageTextToText as auto_class
            else:
                from transformers import AutoModelForCausalLM as auto_class
            self.model = auto_class.from_pretrained(str(model_path), dtype=dtype).to(self.device).eval()
        except (OSError, ValueError, KeyError) as exc:
            raise EvalError(f"cannot load the model from {model_path}: {exc}") from exc
        use_fast_sdpa_mask(self.model)
        self.context = context_length(config)
        self._inputs = PromptBuilder(tokenizer, processor)  # only its model_inputs(): prompts are built already
        eos = self.model.generation_config.eos_token_id
        eos = list(eos) if isinstance(eos, (list, tuple)) else [eos] if eos is not None else []
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
            eos.append(tokenizer.eos_token_id)
        self.eos = eos
        pad = tokenizer.pad_token_id
        self.pad = pad if pad is not None else (eos[0] if eos else 0)
        self.suppress = image_token_ids(tokenizer, processor)

    def _generation_config(self, sampling: Sampling, max_new_tokens: int):
        from transformers import GenerationConfig

        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new_tokens,
            eos_token_id=self.eos or None,
            pad_token_id=self.pad,
            suppress_tokens=self.suppress or None,
            repetition_penalty=1.0,
        )
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        return GenerationConfig(**kwargs)

    def _decode(self, row) -> str:
        ids = row.tolist()
        for i, token in enumerate(ids):
            if token in self.eos:
                ids = ids[: i + 1]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def generate(
        self, prompts: Sequence[Prompt], sampling: Sampling, *, seeds: Sequence[int] | None = None
    ) -> list[list[str]]:
        import torch

        seeds = list(range(len(prompts))) if seeds is None else list(seeds)
        if len(seeds) != len(prompts):
            raise EvalError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        budgets = [token_budget(p, sampling, self.context) for p in prompts]
        # sequences (prompt, sample), longest prompts first: less padding, same batches for the same prompts
        order = sorted(
            ((i, j) for i in range(len(prompts)) for j in range(sampling.n)),
            key=lambda s: (-prompts[s[0]].input_length, s[0], s[1]),
        )
        texts: list[list[str | None]] = [[None] * sampling.n for _ in prompts]
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = self._inputs.model_inputs([prompts[i] for i, _ in batch])
            inputs = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
            config = self._generation_config(sampling, max(budgets[i] for i, _ in batch))
            torch.manual_seed(mix_seed(sampling.seed, *(f"{seeds[i]}.{j}" for i, j in batch)))
            with torch.inference_mode():
                out = self.model.generate(**inputs, generation_config=config, use_model_defaults=False)
            new = out[:, inputs["input_ids"].shape[1] :].cpu()
            for row, (i, j) in zip(new, batch):
                texts[i][j] = self._decode(row[: budgets[i]])
            if self.on_batch is not None:
                self.on_batch(len(batch))
        return texts  # type: ignore[return-value]


_FAST_SDPA = "echovl_sdpa"


def padded_causal_mask(
    batch_size,
    cache_position,
    kv_length,
    kv_offset=0,
    mask_function=None,
    attention_mask=None,
    local_size=None,
    allow_is_causal_skip=True,
    **kwargs,
):
    """transformers' SDPA mask, built by broadcasting instead of ``vmap`` for the plain causal + padding case.

    ``mask[b, 0, q, k] = (k <= cache_position[q]) and attention_mask[b, k]`` (``k`` counted from ``kv_offset``): the
    same boolean mask as ``transformers.masking_utils.sdpa_mask``, which builds it with ``torch.vmap`` on every decode
    step, several milliseconds per step whatever the model's size (``tests/bench/eval.py``: batched generation on the
    tiny model 0.9 s -> 0.4 s). Any other mask (sliding window, packed sequences, custom functions) goes to
    transformers' own function.
    """
    import torch
    from transformers import masking_utils as mu

    if mask_function not in (None, mu.causal_mask_function) or local_size is not None:
        return mu.sdpa_mask(
            batch_size,
            cache_position,
            kv_length,
            kv_offset,
            mask_function or mu.causal_mask_function,
            attention_mask,
            local_size,
            allow_is_causal_skip,
            **kwargs,
        )
    padding = mu.prepare_padding_mask(attention_mask, kv_length, kv_offset, _slice=False)
    if allow_is_causal_skip and mu._ignore_causal_mask_sdpa(padding, len(cache_position), kv_length, kv_offset):
        return None  # SDPA's is_causal does it
    kv = torch.arange(kv_length, device=cache_position.device) + kv_offset
    mask = (kv[None, :] <= cache_position[:, None])[None, None].expand(batch_size, 1, -1, -1)
    return mask if padding is None else mask & padding[:, None, None, kv].bool()


def use_fast_sdpa_mask(model) -> None:
    """Switch a model that attends with SDPA to :func:`padded_causal_mask` (same attention, same mask)."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(_FAST_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(_FAST_SDPA, padded_causal_mask)
    model.set_attn_implementation(_FAST_SDPA)


# ------------------------------------------------------------------------------------------------------ choice


def load_backend(name: str, model_path: str | Path, **kwargs: Any) -> Backend:
    """``auto`` (vLLM when it is installed and a GPU is visible, else transformers), ``vllm`` or ``transformers``.

    ``kwargs`` go to the backend's constructor; those the other backend takes are dropped.
    """
    if name == "auto":
        name = "vllm" if vllm_available() else "transformers"
    if name == "vllm":
        allowed = {"tokenizer", "processor", "tensor_parallel_size", "dtype", "max_images", "show_progress"}
        engine = kwargs.pop("engine_kwargs", {}) or {}
        return VLLMBackend(model_path, **{k: v for k, v in kwargs.items() if k in allowed}, **engine)
    if name == "transformers":
        allowed = {"tokenizer", "processor", "batch_size", "device", "on_batch"}
        return TransformersBackend(model_path, **{k: v for k, v in kwargs.items() if k in allowed})
    raise EvalError(f"unknown backend {name!r} (auto, vllm or transformers)")
