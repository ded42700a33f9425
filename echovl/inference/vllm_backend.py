"""vLLM generation (GPU): the second implementation of :class:`~echovl.inference.generation.Backend`.

``LLM.generate`` in one call for all the prompts it is given, each prompt a request with ``SamplingParams(n,
temperature, top_p, max_tokens, seed)`` (token ids as EasyR1's rollout passes them, images as ``multi_modal_data``,
the vision tokens biased away); ``generate(..., n=[...])`` gives each prompt its own sample count, so prompts with
different ``k`` share one call. vLLM is imported only when the backend is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .generation import Sampling, mix_seed, token_budget
from .loading import InferenceError, context_length, load_processing, vision_token_ids
from .prompt_builder import Prompt

__all__ = ["VLLMBackend", "build_vllm_requests", "vllm_available"]


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
    the prompt's own seed and the vision-token bias.
    """
    counts = [sampling.n] * len(prompts) if n is None else list(n)
    if len(counts) != len(prompts) or min(counts, default=1) < 1:
        raise InferenceError(f"{len(counts)} sample counts for {len(prompts)} prompts, each must be >= 1")
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
            raise InferenceError("--backend vllm needs vLLM (pip install vllm, on a machine with a GPU)") from exc
        import torch

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
        # EasyR1's rollout: never sample an image placeholder
        self.logit_bias = {i: -100.0 for i in vision_token_ids(tokenizer, processor)} or None

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
