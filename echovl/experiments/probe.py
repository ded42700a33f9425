"""``GradientProbeTrainer``: EchoGRPOTrainer that also measures where the gradient comes from, for the experiments.

On every micro-batch it logs, besides the normal training:

- ``probe/rl_grad_norm``: L2 norm over all parameters of the gradient of the RL term alone (TRL's GRPO loss);
- ``probe/echo_grad_norm``: the same for the echo term alone (``coef * normalised J_echo``), 0 when there is none;
- ``probe/rl_token_grad_all_correct`` and ``probe/echo_token_grad_all_correct``: L2 norm of the gradient of each
  term with respect to the per-token log-probs of the rows of all-correct groups. Every parameter gradient flows
  through these log-probs, so 0 here means those groups give the parameters no gradient at all through that term.

They cost one backward pass per term (the training itself is unchanged: the trainer still backpropagates the sum).
"""

from __future__ import annotations

import torch

from ..clip import all_verified_rows
from ..echo import verified_flags
from ..trl import EchoGRPOTrainer

__all__ = ["GradientProbeTrainer"]


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in grads if g is not None)))


class GradientProbeTrainer(EchoGRPOTrainer):
    """See the module docstring."""

    def _echo_mine(self, inputs, out, mine):
        super()._echo_mine(inputs, out, mine)
        verified = verified_flags(self._echo_rewards[:, self._echo_success_index], self.echo_config.success_threshold)
        all_correct = all_verified_rows(verified, torch.arange(verified.numel()) // self.num_generations)
        local = out["completion_ids"].size(0)
        start = self.accelerator.process_index * local
        out["probe_all_correct"] = all_correct[start : start + local]

    def _compute_loss(self, model, inputs):
        rl, echo = self._echo_losses(model, inputs)
        if not model.training or "probe_all_correct" not in inputs:
            return rl if echo is None else rl + echo
        metrics = self._metrics["train"]
        params = [p for p in model.parameters() if p.requires_grad]
        logps = self._echo_captured  # the loss forward's log-probs
        rows = inputs["probe_all_correct"]
        for name, term in (("rl", rl), ("echo", echo)):
            if term is None:
                metrics[f"probe/{name}_grad_norm"].append(0.0)
                metrics[f"probe/{name}_token_grad_all_correct"].append(0.0)
                continue
            metrics[f"probe/{name}_grad_norm"].append(
                _norm(torch.autograd.grad(term, params, retain_graph=True, allow_unused=True))
            )
            (token_grad,) = torch.autograd.grad(term, logps, retain_graph=True)
            metrics[f"probe/{name}_token_grad_all_correct"].append(_norm([token_grad[rows]]))
        return rl if echo is None else rl + echo
