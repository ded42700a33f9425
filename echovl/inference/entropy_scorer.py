"""Token and step entropy of a response, teacher-forced after its prompt, as EchoRL's mining sees it in training.

One transformers forward over prompt + response; for each response token the entropy (nats) of
``softmax(logits / temperature)`` at the sampling temperature, with the vision tokens masked out as the backends never
sample them (:mod:`echovl.inference.loading`), by :func:`echovl.entropy.token_entropy`. The output layer is applied to
``chunk_size`` positions at a time, so no [tokens, vocab] tensor is ever made (for the Hugging Face models whose
forward is ``lm_head(self.model(...)[0])``: Qwen2, Qwen2.5-VL, Llama, ...; other models fall back to their own forward,
which makes the logits of the whole response at once).

:meth:`EntropyScorer.score` tokenises a response on its own (``tokenizer.encode(response)``) after the prompt's ids,
as EasyR1 holds prompt and response; steps come from :func:`echovl.steps.step_index` with the training delimiters,
step entropy from :func:`echovl.clip.step_entropies` over text tokens only (:func:`echovl.steps.special_table`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .loading import LoadedModel
from .prompt_builder import Prompt, PromptBuilder

__all__ = ["EntropyScorer", "ScoredResponse", "Step"]


@dataclass
class Step:
    """One reasoning step of a response."""

    index: int
    start: int
    """First token (of the response)."""
    end: int
    """One past the last token."""
    text: str
    """Its tokens decoded (special tokens skipped)."""
    tokens: int
    """Text tokens (what the step entropy averages over)."""
    entropy: float
    """Mean token entropy over its text tokens (NaN without any)."""


@dataclass
class ScoredResponse:
    ids: list[int]
    """The response's token ids (cut to the model's context when ``truncated``)."""
    entropy: Any
    """[len(ids)] fp32 tensor: the entropy of the distribution each token was drawn from."""
    text_mask: Any
    """[len(ids)] bool tensor: text tokens (not special or vision tokens)."""
    steps: list[Step]
    truncated: int = 0
    """Tokens of the response cut off because prompt + response exceed the model's context."""

    def text_entropies(self):
        """The entropies of the text tokens (a numpy array)."""
        return self.entropy[self.text_mask].numpy()


class EntropyScorer:
    """Token and step entropy of responses under ``loaded``'s model at ``temperature`` (module docstring); steps end
    at ``delimiters`` (``echo.delimiters``), ``chunk_size`` is ``echo.entropy_chunk_size``."""

    def __init__(
        self,
        loaded: LoadedModel,
        *,
        temperature: float,
        delimiters: Sequence[str] = ("\n",),
        chunk_size: int = 128,
    ):
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.builder = PromptBuilder(loaded.tokenizer, loaded.processor)  # continuations and model inputs only
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.context = loaded.context
        self.is_delimiter = loaded.delimiter_table(delimiters)
        self.non_text = loaded.special_table()
        self.suppress = loaded.vision_ids()
        model = loaded.model
        body = getattr(model, "model", None)
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        config = getattr(model, "config", None)
        softcap = getattr(getattr(config, "text_config", config), "final_logit_softcapping", None)
        self._split = body is not None and head is not None and not softcap
        self._body, self._head = body, head
        self._device = loaded.device

    def _entropy(self, hidden_or_logits, project: bool):
        import torch

        from ..entropy import token_entropy

        out = []
        for start in range(0, hidden_or_logits.shape[0], self.chunk_size):
            chunk = hidden_or_logits[start : start + self.chunk_size]
            logits = (self._head(chunk) if project else chunk).float() / self.temperature
            if self.suppress:
                logits[:, [i for i in self.suppress if i < logits.shape[-1]]] = -torch.inf  # never sampled
            out.append(token_entropy(logits, self.chunk_size).cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def token_entropy(self, prompt: Prompt, ids: Sequence[int]):
        """[len(ids)] fp32 entropy of each response token's distribution, given the prompt and the tokens before."""
        import torch

        n = len(ids)
        if n == 0:
            return torch.zeros(0)
        inputs = self.builder.model_inputs([self.builder.continuation(prompt, ids)])
        inputs = {k: v.to(self._device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
        with torch.inference_mode():
            if self._split:
                hidden = self._body(**inputs, use_cache=False)[0][0]
                # the output at position p predicts token p + 1: the response's tokens from the last prompt position
                return self._entropy(hidden[-(n + 1) : -1], project=True)
            logits = self.model(**inputs, use_cache=False, logits_to_keep=n + 1).logits[0]
            return self._entropy(logits[:-1], project=False)

    def score(self, prompt: Prompt, response: str) -> ScoredResponse:
        """The response's tokens, their entropy, and its steps with their entropy."""
        import torch

        from ..clip import step_entropies
        from ..steps import step_index, step_spans, text_mask

        ids = self.tokenizer.encode(response, add_special_tokens=False)
        truncated = 0
        if self.context is not None and prompt.input_length + len(ids) > self.context:
            keep = max(0, self.context - prompt.input_length)
            truncated, ids = len(ids) - keep, ids[:keep]
        entropy = self.token_entropy(prompt, ids)
        tensor = torch.tensor([ids], dtype=torch.long)
        mask = torch.ones_like(tensor)
        steps = step_index(tensor, mask, self.is_delimiter)
        text = text_mask(tensor, mask, self.non_text)
        means, counts = step_entropies(entropy.unsqueeze(0), steps, text)
        records = []
        for index, (start, end) in enumerate(step_spans(steps[0].tolist())):
            piece = self.tokenizer.decode(ids[start:end], skip_special_tokens=True, clean_up_tokenization_spaces=False)
            count = int(counts[0, index])
            records.append(Step(index, start, end, piece, count, float(means[0, index]) if count else math.nan))
        return ScoredResponse(list(ids), entropy, text[0], records, truncated)
