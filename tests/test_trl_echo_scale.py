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


def _echo_only_trainer(tiny_lm_dir, tmp_path, loss_types, echo_config, *, reward=accuracy, **config):
    """A run of the tiny LM on 12 text prompts, one group (4 rollouts of up to 8 tokens) per micro-batch, gradient
    clipping off (the optimizer sees the raw gradient), GRPOConfig ``config`` otherwise; step ``t`` trains with
    ``loss_types[t]``. It records, per optimizer step, the weights it starts from, the gradient the optimizer
    receives and, per micro-batch, the test's own index of it (counted here, from 0) and its rows with clip tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from echovl.trl import EchoGRPOTrainer

    class EchoOnly(EchoGRPOTrainer):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.steps: list[dict] = []
            self.micro_batches = 0
            trainer = self

            class Grads(TrainerCallback):
                def on_pre_optimizer_step(self, args, state, control, **_):
                    trainer.steps[-1]["grads"] = [p.grad.detach().clone() for p in trainer.model.parameters()]

            self.add_callback(Grads())

        def _compute_loss(self, model, inputs):
            index, self.micro_batches = self.micro_batches, self.micro_batches + 1
            if index % self.args.gradient_accumulation_steps == 0:  # the step's first micro-batch
                weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
                self.loss_type = loss_types[len(self.steps)]
                self.steps.append({"weights": weights, "micro": [], "loss_type": self.loss_type})
            loss, echo = self._echo_losses(model, inputs)
            rows, counted = [], None
            if "echo_weight" in inputs:  # absent when the batch's lambda is 0
                keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "echo_weight")
                keys += ("echo_clip_weight",)
                clip_rows = (inputs["echo_weight"] > 0).any(-1).nonzero().flatten()
                rows = [{k: inputs[k][r] for k in keys} for r in clip_rows]
                counted = self._echo_step_clips()  # the trainer's (clips, share): compared after the gradients
            self.steps[-1]["micro"].append({"index": index, "rows": rows, "counted": counted})
            return loss * 0 if echo is None else loss * 0 + echo

    torch.manual_seed(0)
    args = grpo_config(tmp_path, max_grad_norm=0.0, max_completion_length=8, per_device_train_batch_size=4, **config)
    return EchoOnly(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        reward_funcs=[reward],
        args=args,
        train_dataset=text_dataset(12),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_dir, padding_side="left"),
        echo_config=echo_config,
    )


def _parts(step, accumulation, per_generation, iterations):
    """The step's parts as docs/echo_scale.md defines them, from the test's own micro-batch indices: micro-batch
    ``k`` trains generation batch ``k // (steps_per_generation x num_iterations)``; the answer maps each generation
    batch to its part ``(share, rows)``, share = its micro-batches in the step / ``gradient_accumulation_steps``, rows = the clip rows
    of those micro-batches (their count is the part's clip count, the denominator of its mean)."""
    lifetime = per_generation * iterations
    parts: dict[int, dict] = {}
    for micro in step["micro"]:
        part = parts.setdefault(micro["index"] // lifetime, {"micro_batches": 0, "rows": []})
        part["micro_batches"] += 1
        part["rows"] += micro["rows"]
    return {generation: (part["micro_batches"] / accumulation, part["rows"]) for generation, part in parts.items()}


def _assert_step_gradient(model_dir, step, objective):
    """The gradient the optimizer received on ``step`` equals the gradient of ``objective(reference)``, the
    reference a fresh copy of the model at the step's weights (0 when the objective is ``None``)."""
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(model_dir)
    reference.load_state_dict(step["weights"])
    value = objective(reference)
    if value is not None:
        value.backward()
    for got, param in zip(step["grads"], reference.parameters()):
        expected = torch.zeros_like(param) if param.grad is None else param.grad
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-4)


def _clip_nll(model, rows, temperature, weighted=False):
    """Mean over ``rows`` of each clip's mean NLL over its tokens (one clip per row): the model's plain logits over
    prompt + completion (left-padded prompt, as TRL feeds it), at the sampling temperature. ``weighted`` (top_k /
    soft, nested clips): the sum of the rows' token-weighted NLLs over the sum of their clip weights."""
    per_clip, weights = [], []
    for row in rows:
        ids = torch.cat([row["prompt_ids"], row["completion_ids"]])[None]
        mask = torch.cat([row["prompt_mask"], row["completion_mask"]])[None]
        start, length = row["prompt_ids"].numel() - 1, row["completion_ids"].numel()
        logits = model(input_ids=ids, attention_mask=mask).logits[0, start : start + length].float()
        log_probs = torch.log_softmax(logits / temperature, -1).gather(-1, row["completion_ids"][:, None])[:, 0]
        clip = row["echo_weight"] > 0
        if weighted:
            per_clip.append(-(log_probs * row["echo_weight"])[clip].sum())
            weights.append(row["echo_clip_weight"])
        else:
            per_clip.append(-log_probs[clip].mean())
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
        (("dapo", "grpo"), 3, 2, 2),  # step 2: 1/3 from the first generation batch (its 2nd pass), 2/3 from the next
    ],
)
def test_every_optimizer_step_gets_coef_times_the_mean_clip_nll(
    tiny_lm_dir, tmp_path, loss_types, accumulation, per_generation, iterations
):
    trainer = _echo_only_trainer(
        tiny_lm_dir,
        tmp_path,
        loss_types,
        {"coef": COEF},
        loss_type=loss_types[0],
        gradient_accumulation_steps=accumulation,
        steps_per_generation=per_generation,
        num_iterations=iterations,
        max_steps=2,
    )
    trainer.train()
    config = trainer.args
    assert [step["loss_type"] for step in trainer.steps] == list(loss_types)
    for number, step in enumerate(trainer.steps):
        # steps are windows of gradient_accumulation_steps micro-batches from the first
        assert [m["index"] for m in step["micro"]] == list(range(number * accumulation, (number + 1) * accumulation))
        parts = _parts(step, accumulation, per_generation, iterations)
        # the step's echo objective: one mean over its clips per generation batch it draws from, weighted by its
        # share of the step's micro-batches (1 when the step lies inside one generation batch)
        _assert_step_gradient(
            tiny_lm_dir,
            step,
            lambda model, parts=parts: (
                COEF
                * sum(share * _clip_nll(model, rows, config.temperature) for share, rows in parts.values() if rows)
            ),
        )
        # the trainer counted each part's clips (and its share) before training on it
        for micro in step["micro"]:
            share, rows = parts[micro["index"] // (per_generation * iterations)]
            assert micro["counted"] == (len(rows), share), (number, micro["index"])
    if per_generation > accumulation:  # the two steps of one generation batch hold different numbers of clips
        counts = [sum(len(m["rows"]) for m in step["micro"]) for step in trainer.steps]
        assert counts[0] != counts[1], counts
    if (per_generation * iterations) % accumulation:  # some step spans two generation batches
        spans = [len(_parts(step, accumulation, per_generation, iterations)) for step in trainer.steps]
        assert max(spans) == 2, spans


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
    echo_config = {"coef": COEF, "selection": "top_k", "top_k": 3, "coef_schedule": "linear", "coef_warmup_steps": 2}
    trainer = _echo_only_trainer(
        tiny_lm_dir,
        tmp_path,
        ("grpo", "grpo"),
        echo_config,
        gradient_accumulation_steps=2,
        steps_per_generation=2,
        max_steps=2,
    )
    trainer.train()
    config = trainer.args
    nested = 0
    for coef, step in zip((COEF / 2, COEF), trainer.steps):
        ((share, rows),) = _parts(step, 2, 2, 1).values()
        assert share == 1 and rows
        for micro in step["micro"]:  # the trainer's count is the summed clip weight
            assert micro["counted"] == (sum(float(r["echo_clip_weight"]) for r in rows), 1)
        nested += sum(float(r["echo_clip_weight"]) > 1 for r in rows)
        _assert_step_gradient(
            tiny_lm_dir,
            step,
            lambda model, rows=rows, coef=coef: coef * _clip_nll(model, rows, config.temperature, weighted=True),
        )
    assert nested > 0  # some rollout holds two clips


# each generation batch's accuracy (2 groups of 4 rollouts) and the fraction of its groups that are all correct,
# written out by hand: docs/echo_settings.md, adaptive lambda_t = coef x d_t
ADAPTIVE_BATCHES = (
    ([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0], 0.5),  # an all-correct group and a mixed one
    ([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.0),  # no all-correct group: lambda 0, TRL's loss alone
    ([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], 1.0),  # every group all correct: lambda = coef
)


def test_adaptive_lambda_is_coef_times_the_batch_fraction_of_all_correct_groups(tiny_lm_dir, tmp_path):
    """echo.coef_schedule adaptive: the generation batch of step t (one per step here) trains with
    ``coef x d_t``, ``d_t`` the fraction of its groups whose rollouts are all verified; a batch without such a group
    trains TRL's loss alone. Checked on the optimizer's gradient and on the logged ``echo/coef``."""
    calls = []

    def accuracy(completions, **kwargs):
        scores = ADAPTIVE_BATCHES[len(calls)][0]
        assert len(completions) == len(scores)
        calls.append(scores)
        return list(scores)

    trainer = _echo_only_trainer(
        tiny_lm_dir,
        tmp_path,
        ("grpo",) * len(ADAPTIVE_BATCHES),
        {"coef": COEF, "coef_schedule": "adaptive"},
        reward=accuracy,
        gradient_accumulation_steps=2,
        steps_per_generation=2,  # one group per micro-batch, two per generation batch
        max_steps=len(ADAPTIVE_BATCHES),
    )
    trainer.train()
    config = trainer.args
    assert len(calls) == len(trainer.steps) == len(ADAPTIVE_BATCHES)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == len(ADAPTIVE_BATCHES)
    for step, log, (_, fraction) in zip(trainer.steps, logs, ADAPTIVE_BATCHES):
        coef = COEF * fraction
        assert log["echo/degenerate_groups"] == fraction
        assert log["echo/coef"] == pytest.approx(coef, rel=1e-12, abs=0)
        ((share, rows),) = _parts(step, 2, 2, 1).values()
        assert share == 1 and bool(rows) == (coef > 0)  # lambda 0: nothing mined, no clip tensors
        _assert_step_gradient(
            tiny_lm_dir,
            step,
            lambda model, rows=rows, coef=coef: coef * _clip_nll(model, rows, config.temperature) if rows else None,
        )
