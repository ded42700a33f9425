"""EchoGRPOTrainer on the tiny offline models: metrics, traces, the echo term's value, exact GRPO equivalence when
off, and the gradient of a fully degenerate batch."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.trl_helpers import accuracy, all_correct, grpo_config, text_dataset, vl_dataset

ECHO_METRICS = (
    "echo/loss",
    "echo/clips",
    "echo/clip_length",
    "echo/clip_step_entropy",
    "echo/degenerate_groups",
    "echo/all_wrong_groups",
    "echo/entropy",
    "timing_s/echo_mining",
)


def _vl_model(path):
    from transformers import AutoModelForImageTextToText

    torch.manual_seed(0)
    return AutoModelForImageTextToText.from_pretrained(path)


def _vl_processor(path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(path, padding_side="left")


def _train_steps(trainer):
    return [h for h in trainer.state.log_history if "loss" in h]


# ------------------------------------------------------------------------------------- one recorded VLM run
@pytest.fixture(scope="module")
def recorded_run(tiny_vl_dir, tmp_path_factory):
    """Two echo steps on the tiny Qwen2.5-VL, recording each micro-batch's echo term and an independent NLL."""
    from echovl.trl import EchoGRPOTrainer

    class Recording(EchoGRPOTrainer):
        records = []

        def _echo_losses(self, model, inputs):
            loss, echo = super()._echo_losses(model, inputs)
            # the clip NLL recomputed from the model's plain logits (no fused head), at the sampling temperature
            prompt_len, length = inputs["prompt_ids"].size(1), inputs["completion_ids"].size(1)
            with torch.no_grad():
                logits = model(
                    input_ids=torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1),
                    attention_mask=torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1),
                    pixel_values=inputs["pixel_values"],
                    image_grid_thw=inputs["image_grid_thw"],
                ).logits[:, prompt_len - 1 : prompt_len - 1 + length]
            log_probs = torch.log_softmax(logits.float() / self.args.temperature, -1)
            token_logps = log_probs.gather(-1, inputs["completion_ids"].unsqueeze(-1)).squeeze(-1)
            self.records.append(
                {
                    "echo": None if echo is None else float(echo.detach()),
                    "mask": inputs["echo_weight"] > 0,
                    "completion_mask": inputs["completion_mask"].clone(),
                    "token_logps": token_logps,
                    "clip_count": self._echo_step_clips()[0],
                }
            )
            return loss, echo

    out = tmp_path_factory.mktemp("echo_run")
    trainer = Recording(
        model=_vl_model(tiny_vl_dir),
        reward_funcs=[accuracy],
        args=grpo_config(out),
        train_dataset=vl_dataset(),
        processing_class=_vl_processor(tiny_vl_dir),
        echo_config={"trace_freq": 1, "trace_groups": 8},
    )
    trainer.train()
    return trainer


def test_echo_metrics_are_logged(recorded_run):
    steps = _train_steps(recorded_run)
    assert len(steps) == 2
    for logs in steps:
        missing = [key for key in ECHO_METRICS if key not in logs]
        assert not missing, f"missing metrics {missing}"
        assert logs["echo/clips"] == 2  # 8 rollouts = 2 groups of 4, each with verified rollouts 0 and 2
        assert logs["echo/degenerate_groups"] == 0 and logs["echo/all_wrong_groups"] == 0
        assert math.isfinite(logs["echo/loss"]) and logs["echo/loss"] > 0
        assert logs["echo/clip_length"] >= 1
        # the aligned setup has no old-log-prob pass: the one extra forward is timed
        assert logs["timing_s/echo_entropy_forward"] > 0


def test_echo_term_is_the_clip_nll_normalised_by_the_clip_count(recorded_run):
    """coef * mean over clips of the mean NLL of the clip tokens, with log-probs at the sampling temperature."""
    coef = recorded_run.echo_config.coef
    for record in recorded_run.records:
        mask = record["mask"]
        assert mask.any()
        assert not (mask & ~record["completion_mask"].bool()).any()  # clip tokens are response tokens
        rows = mask.any(-1)
        per_clip = [-(record["token_logps"][r][mask[r]]).mean() for r in rows.nonzero().flatten()]
        assert len(per_clip) == record["clip_count"]  # one micro-batch holds the whole generation batch
        expected = coef * float(torch.stack(per_clip).mean())
        assert record["echo"] == pytest.approx(expected, rel=1e-4)


def test_trace_files(recorded_run):
    from echovl.traces import list_trace_files, read_trace_file

    files = list_trace_files(recorded_run.echo_trace_dir)
    assert [step for step, _ in files] == [1, 2]
    records = list(read_trace_file(files[0][1]))
    assert len(records) == 2  # both groups of the batch
    for record in records:
        assert record["source"] == "trl" and record["train_step"] == 1
        assert len(record["rollouts"]) == 4
        assert [r["verified"] for r in record["rollouts"]] == [True, False, True, False]
        assert record["prompt"].count("Find x") == 1 and record["answer"] in {"0", "1", "2", "3"}
        assert record["answer"] in record["prompt"]
        clip = record["clip"]
        assert clip is not None and clip["rollout"] in (0, 2)
        rollout = record["rollouts"][clip["rollout"]]
        assert 0 < clip["char_end"] <= len(rollout["text"])
        assert rollout["steps"][clip["step"]]["entropy"] == pytest.approx(clip["step_entropy"], abs=1e-5)
        assert (Path(recorded_run.echo_trace_dir) / record["image"]).is_file()


# ------------------------------------------------------------------------------------- equivalence when off
def test_echo_off_matches_grpo_trainer(tiny_vl_dir, tmp_path):
    from trl import GRPOTrainer

    from echovl.trl import EchoGRPOTrainer

    runs = {}
    for name, cls, kwargs in (
        ("grpo", GRPOTrainer, {}),
        ("echo_off", EchoGRPOTrainer, {"echo_config": {"enable": False, "trace_freq": 1}}),
    ):
        trainer = cls(
            model=_vl_model(tiny_vl_dir),
            reward_funcs=[accuracy],
            args=grpo_config(tmp_path / name),
            train_dataset=vl_dataset(),
            processing_class=_vl_processor(tiny_vl_dir),
            **kwargs,
        )
        trainer.train()
        runs[name] = (trainer, _train_steps(trainer))
    (grpo, grpo_logs), (off, off_logs) = runs["grpo"], runs["echo_off"]
    assert [h["loss"] for h in off_logs] == [h["loss"] for h in grpo_logs]
    assert [h["grad_norm"] for h in off_logs] == [h["grad_norm"] for h in grpo_logs]
    for a, b in zip(grpo.model.parameters(), off.model.parameters()):
        assert torch.equal(a, b)
    assert all("echo/loss" not in h and "echo/clips" not in h for h in off_logs)
    assert all(h["echo/degenerate_groups"] == 0 for h in off_logs)  # outcomes are still reported
    assert not (tmp_path / "echo_off" / "echo_traces").exists()  # nothing mined, nothing traced


# ------------------------------------------------------------------------------------- degenerate batch
@pytest.mark.parametrize(
    "model_dir, enable", [("tiny_vl_dir", False), ("tiny_vl_dir", True), ("tiny_qwen3_vl_dir", True)]
)
def test_all_correct_batch_has_a_gradient_only_with_echo(request, tmp_path, model_dir, enable):
    """Qwen2.5-VL, and Qwen3-VL (its processor, its tokenizer's one-token <think> markers)."""
    from echovl.trl import EchoGRPOTrainer

    model_dir = request.getfixturevalue(model_dir)
    trainer = EchoGRPOTrainer(
        model=_vl_model(model_dir),
        reward_funcs=[all_correct],
        args=grpo_config(tmp_path, max_steps=1),
        train_dataset=vl_dataset(),
        processing_class=_vl_processor(model_dir),
        echo_config={"enable": enable},
    )
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    (logs,) = _train_steps(trainer)
    assert logs["echo/degenerate_groups"] == 1.0 and logs["frac_reward_zero_std"] == 1.0
    changed = any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    if enable:
        assert logs["grad_norm"] > 0 and changed
        assert logs["echo/clips"] == 2
    else:
        assert logs["grad_norm"] == 0.0 and not changed


# ------------------------------------------------------------------------------------- text-only, entropy source
def _text_run(tiny_lm_dir, out, **config):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echovl.trl import EchoGRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir, padding_side="left")
    torch.manual_seed(0)
    trainer = EchoGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        reward_funcs=[accuracy],
        args=grpo_config(out, max_steps=1, **config),
        train_dataset=text_dataset(),
        processing_class=tokenizer,
    )
    trainer.train()
    return _train_steps(trainer)[0]


def test_text_only_entropy_comes_from_the_old_log_prob_pass_when_trl_runs_one(tiny_lm_dir, tmp_path):
    """num_iterations=2 makes TRL compute old log-probs: the entropy comes from that pass (no extra forward) and
    equals what the extra forward gives on the same first batch."""
    extra = _text_run(tiny_lm_dir, tmp_path / "aligned")
    reused = _text_run(tiny_lm_dir, tmp_path / "iterations", num_iterations=2)
    assert "timing_s/echo_entropy_forward" in extra
    assert "timing_s/echo_entropy_forward" not in reused
    assert reused["echo/clips"] == extra["echo/clips"] == 2
    assert reused["echo/clip_step_entropy"] == pytest.approx(extra["echo/clip_step_entropy"], rel=1e-5)
    assert reused["echo/entropy"] == pytest.approx(extra["echo/entropy"], rel=1e-5)


# ------------------------------------------------------------------------------------- configuration errors
def test_missing_success_reward_is_an_error(tiny_lm_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echovl.trl import EchoGRPOTrainer

    def correctness(completions, **kwargs):
        return [1.0] * len(completions)

    kwargs = dict(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        reward_funcs=[correctness],
        args=grpo_config(tmp_path),
        train_dataset=text_dataset(),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_dir, padding_side="left"),
    )
    with pytest.raises(ValueError, match=r"success_key='accuracy'.*\['correctness'\]"):
        EchoGRPOTrainer(**kwargs)
    with pytest.raises(ValueError, match="Unknown key echo.coeff"):
        EchoGRPOTrainer(**kwargs, echo_config={"coeff": 0.1})
    trainer = EchoGRPOTrainer(**kwargs, echo_config={"success_key": "correctness"})
    assert trainer.echo_config.success_key == "correctness"


def test_reward_functions():
    from echovl.trl import accuracy as accuracy_reward
    from echovl.trl import think_format

    good = "<think>\na = 1.\n</think>\n\\boxed{3}"
    completions = [good, [{"role": "assistant", "content": good}], "\\boxed{4}"]
    assert accuracy_reward(completions, answer=["3", "3", "3"]) == [1.0, 1.0, 0.0]
    assert think_format(completions) == [1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="3 completions but 2 answers"):
        accuracy_reward(completions, answer=["3", "3"])


def test_no_echo_before_start_step_then_the_step_lambda(tiny_lm_dir, tmp_path):
    """echo.start_step=2: the first step mines nothing and trains TRL's loss alone; the second logs its lambda."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echovl.trl import EchoGRPOTrainer

    torch.manual_seed(0)
    trainer = EchoGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
        reward_funcs=[accuracy],
        args=grpo_config(tmp_path, max_completion_length=8),
        train_dataset=text_dataset(),
        processing_class=AutoTokenizer.from_pretrained(tiny_lm_dir, padding_side="left"),
        echo_config={"coef": 0.25, "start_step": 2, "selection": "soft"},
    )
    trainer.train()
    first, second = _train_steps(trainer)
    assert first["echo/coef"] == 0 and "echo/loss" not in first and "echo/clips" not in first
    assert second["echo/coef"] == 0.25 and second["echo/clips"] > 0 and math.isfinite(second["echo/loss"])
    assert second["echo/clip_weight_max"] <= 1 and second["echo/clips_per_group"] >= 1
