"""The echo term's scale in EchoGRPOTrainer, under every TRL 1.16 ``loss_type`` and the settings that change how
TRL splits a generation batch into optimizer steps (``gradient_accumulation_steps``, ``steps_per_generation``,
``num_iterations``): each optimizer step's echo gradient is exactly ``coef x`` the gradient of the mean over the
step's clips of each clip's mean NLL, against a plain autograd reference at the step's weights.

The trainer under test trains on the echo term alone (TRL's loss times 0, so its own normalisation, whichever the
``loss_type``, still runs but adds nothing), keeps each step's weights and clip rows, and the gradient the
optimizer receives (``on_pre_optimizer_step``, gradient clipping off). To keep the runs few, each run trains its
two optimizer steps with two different loss types (TRL reads ``loss_type`` afresh in every ``_compute_loss``)."""

from __future__ import annotations

import pytest
import torch

from tests.trl_helpers import grpo_config, text_dataset

COEF = 0.5


def accuracy(completions, **kwargs):
    """Rollouts 0 and 2 of groups 0 and 1 of every three are "correct": the third group has no clip, so the clip
    count of a step depends on how TRL's shuffle spreads the rows."""
    return [float(i % 2 == 0 and (i // 4) % 3 != 2) for i in range(len(completions))]


def _echo_only_trainer(loss_types, **kwargs):
    from transformers import TrainerCallback

    from echovl.trl import EchoGRPOTrainer

    class EchoOnly(EchoGRPOTrainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.steps: list[dict] = []
            trainer = self

            class Grads(TrainerCallback):
                def on_pre_optimizer_step(self, args, state, control, **_):
                    trainer.steps[-1]["grads"] = [p.grad.detach().clone() for p in trainer.model.parameters()]

            self.add_callback(Grads())

        def _compute_loss(self, model, inputs):
            if self._step % self.current_gradient_accumulation_steps == 0:  # the step's first micro-batch
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                self.loss_type = loss_types[len(self.steps)]
                self.steps.append({"weights": weights, "parts": {}, "loss_type": self.loss_type})
            loss, echo = self._echo_losses(model, inputs)
            clips, share = self._echo_step_clips()
            part = self.steps[-1]["parts"].setdefault(self._echo_generated_at, {"share": share, "rows": []})
            rows = inputs["echo_mask"].any(-1).nonzero().flatten().tolist()
            keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "echo_mask")
            keys += tuple(k for k in ("echo_weight", "echo_clip_weight") if k in inputs)  # top_k / soft
            part["rows"] += [{k: inputs[k][r] for k in keys} for r in rows]
            part["clips"] = clips
            return loss * 0 if echo is None else loss * 0 + echo

    return EchoOnly(**kwargs)


def _clip_nll(model, rows, temperature):
    """Mean over ``rows`` of each clip's mean NLL: the model's plain logits over prompt + completion (left-padded
    prompt, as TRL feeds it), at the sampling temperature. Rows with clip weights (top_k / soft): the sum of their
    token-weighted NLLs over the sum of their clip weights."""
    per_clip, weights = [], []
    for row in rows:
        ids = torch.cat([row["prompt_ids"], row["completion_ids"]])[None]
        mask = torch.cat([row["prompt_mask"], row["completion_mask"]])[None]
        start, length = row["prompt_ids"].numel() - 1, row["completion_ids"].numel()
        logits = model(input_ids=ids, attention_mask=mask).logits[0, start : start + length].float()
        log_probs = torch.log_softmax(logits / temperature, -1).gather(-1, row["completion_ids"][:, None])[:, 0]
        if "echo_weight" in row:
            per_clip.append(-(log_probs * row["echo_weight"])[row["echo_mask"]].sum())
            weights.append(row["echo_clip_weight"])
        else:
            per_clip.append(-log_probs[row["echo_mask"]].mean())
            weights.append(torch.tensor(1.0))
    return torch.stack(per_clip).sum() / torch.stack(weights).sum()


LOSS_TYPES = ("grpo", "dapo", "cispo", "bnpo", "dr_grpo", "luspo", "sapo", "vespo")  # every loss_type of TRL 1.16


@pytest.mark.parametrize(
    ("loss_types", "accumulation", "per_generation", "iterations"),
    [
        (("grpo", "dapo"), 2, 4, 1),  # one generation batch serves two optimizer steps
        (("cispo", "bnpo"), 2, 2, 2),  # each generation batch trained twice (TRL computes old log-probs)
        (("dr_grpo", "luspo"), 2, 2, 1),  # TRL's default alignment, with accumulation
        (("sapo", "vespo"), 2, 1, 1),  # a step spans two generation batches
    ],
)
def test_every_optimizer_step_gets_coef_times_the_mean_clip_nll(
    tiny_lm_dir, tmp_path, loss_types, accumulation, per_generation, iterations
):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = grpo_config(
        tmp_path,
        loss_type=loss_types[0],
        gradient_accumulation_steps=accumulation,
        steps_per_generation=per_generation,
        num_iterations=iterations,
        max_grad_norm=0.0,  # no clipping: the optimizer sees the raw gradient
        max_completion_length=8,
        per_device_train_batch_size=4,  # one group per micro-batch
        max_steps=2,
    )
    trainer = _echo_only_trainer(
        loss_types,
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        reward_funcs=[accuracy],
        args=config,
        train_dataset=text_dataset(12),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_dir, padding_side="left"),
        echo_config={"coef": COEF},
    )
    trainer.train()
    assert [step["loss_type"] for step in trainer.steps] == list(loss_types)
    for step in trainer.steps:
        reference = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        reference.load_state_dict(step["weights"])
        # the step's echo objective: one mean over its clips per generation batch it draws from, weighted by its
        # share of the step's micro-batches (1 when the step lies inside one generation batch)
        objective = 0.0
        for part in step["parts"].values():
            assert len(part["rows"]) == part["clips"]  # the step's clip count, counted before training on it
            if part["rows"]:
                objective = objective + part["share"] * _clip_nll(reference, part["rows"], config.temperature)
        (COEF * objective).backward()
        for got, param in zip(step["grads"], reference.parameters()):
            expected = torch.zeros_like(param) if param.grad is None else param.grad
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    if per_generation > accumulation:  # the two steps of one generation batch hold different numbers of clips
        counts = [sum(p["clips"] for p in step["parts"].values()) for step in trainer.steps]
        assert counts[0] != counts[1], counts


def test_the_runs_cover_every_loss_type():
    import inspect

    from trl import GRPOTrainer

    source = inspect.getsource(GRPOTrainer._compute_loss)
    assert all(f'"{name}"' in source for name in LOSS_TYPES)  # TRL knows each of them...
    covered = {
        t
        for params in test_every_optimizer_step_gets_coef_times_the_mean_clip_nll.pytestmark[0].args[1]
        for t in params[0]
    }
    assert covered == set(LOSS_TYPES)  # ...and each is tested above


def test_weighted_clips_and_a_lambda_warm_up_scale_every_step(tiny_lm_dir, tmp_path):
    """echo.selection top_k (nested clips, weight 1 each) with a linear lambda warm-up over 2 steps: step t gets
    ``coef_t x`` (sum of its clips' weighted NLL / sum of their weights), coef_1 = coef / 2, coef_2 = coef."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = grpo_config(
        tmp_path,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
        max_grad_norm=0.0,
        max_completion_length=8,
        per_device_train_batch_size=4,
        max_steps=2,
    )
    trainer = _echo_only_trainer(
        ("grpo", "grpo"),
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        reward_funcs=[accuracy],
        args=config,
        train_dataset=text_dataset(12),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_dir, padding_side="left"),
        echo_config={
            "coef": COEF,
            "selection": "top_k",
            "top_k": 3,
            "coef_schedule": "linear",
            "coef_warmup_steps": 2,
        },
    )
    trainer.train()
    nested = 0
    for coef, step in zip((COEF / 2, COEF), trainer.steps):
        reference = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        reference.load_state_dict(step["weights"])
        (part,) = step["parts"].values()
        assert part["rows"] and sum(float(r["echo_clip_weight"]) for r in part["rows"]) == part["clips"]
        nested += sum(float(r["echo_clip_weight"]) > 1 for r in part["rows"])
        (coef * _clip_nll(reference, part["rows"], config.temperature)).backward()
        for got, param in zip(step["grads"], reference.parameters()):
            expected = torch.zeros_like(param) if param.grad is None else param.grad
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)
    assert nested > 0  # some rollout holds two clips
