"""The inference layer, shared by the evaluation, the analyses, the demo's live tab and the CPU experiment.

- :mod:`echovl.inference.loading`: :func:`load_model` (a (vision-)language model, its tokenizer and processor:
  :class:`LoadedModel`), :func:`load_processing`, the model's context, the vision tokens never sampled, and
  :class:`InferenceError`, which the commands' own errors subclass.
- :mod:`echovl.inference.prompt_builder`: :class:`PromptBuilder`, prompts exactly as EasyR1's ``RLHFDataset`` builds
  them in training, and the batched model inputs of built prompts.
- :mod:`echovl.inference.generation`: ``backend.generate(prompts, Sampling(n=...), seeds=...) -> texts per prompt``:
  :class:`TransformersBackend` (batched ``generate`` with per-request seeds; :meth:`~TransformersBackend.sample`
  is one batch with its response ids) and :func:`load_backend`.
- :mod:`echovl.inference.vllm_backend`: :class:`VLLMBackend`, the same interface on vLLM (imported when built).
- :mod:`echovl.inference.entropy_scorer`: :class:`EntropyScorer`, token and step entropy of a response with the
  vision tokens masked, the output layer applied in chunks.

It builds on the core (:mod:`echovl.steps`, :mod:`echovl.entropy`, :mod:`echovl.clip`) and imports no command
(``echovl.eval``, ``echovl.analysis``, ``echovl.demo``, ``echovl.experiments``). Nothing here imports torch,
transformers or vLLM at import time.
"""

from .entropy_scorer import EntropyScorer, ScoredResponse, Step
from .generation import Backend, Sampling, TransformersBackend, load_backend, mix_seed, token_budget
from .loading import (
    InferenceError,
    LoadedModel,
    context_length,
    is_hub_name,
    load_model,
    load_processing,
    vision_token_ids,
)
from .prompt_builder import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, Prompt, PromptBuilder, resize_image
from .vllm_backend import VLLMBackend, build_vllm_requests, vllm_available

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_PIXELS",
    "Backend",
    "EntropyScorer",
    "InferenceError",
    "LoadedModel",
    "Prompt",
    "PromptBuilder",
    "Sampling",
    "ScoredResponse",
    "Step",
    "TransformersBackend",
    "VLLMBackend",
    "build_vllm_requests",
    "context_length",
    "is_hub_name",
    "load_backend",
    "load_model",
    "load_processing",
    "mix_seed",
    "resize_image",
    "token_budget",
    "vision_token_ids",
    "vllm_available",
]
