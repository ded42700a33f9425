"""Shared pieces of the TRL tests: skip when TRL cannot be imported, tiny datasets, configs and reward functions."""

from __future__ import annotations

import os
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

if sys.version_info < (3, 11):
    pytest.skip("echovl.trl needs Python >= 3.11 (TRL 1.16)", allow_module_level=True)
try:
    import trl  # noqa: F401
except ImportError as error:
    pytest.skip(f'TRL is not importable ({error}): pip install "echovl[trl]"', allow_module_level=True)


def vl_dataset(count: int = 4):
    from datasets import Dataset

    from echovl.testing import tiny_image

    rows = [
        {"prompt": [{"role": "user", "content": f"Find x {i}."}], "image": tiny_image(i), "answer": str(i)}
        for i in range(count)
    ]
    return Dataset.from_list(rows)


def text_dataset(count: int = 4):
    from datasets import Dataset

    rows = [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}], "answer": str(i + 1)} for i in range(count)]
    return Dataset.from_list(rows)


def grpo_config(output_dir, **overrides):
    from echovl.trl import GRPOConfig

    values = dict(
        output_dir=str(output_dir),
        use_cpu=os.environ.get("ECHOVL_TEST_DEVICE", "cpu") == "cpu",  # ECHOVL_TEST_DEVICE=cuda: TRL's accelerator
        bf16=False,
        fp16=False,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=12,
        temperature=0.8,
        beta=0.0,
        learning_rate=1e-3,
        max_steps=2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        gradient_checkpointing=False,
        disable_tqdm=True,
        seed=0,
    )
    values.update(overrides)
    return GRPOConfig(**values)


def accuracy(completions, **kwargs):
    """Rollouts 0, 2, 4, ... of every batch are "correct": every group is mixed."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def all_correct(completions, **kwargs):
    return [1.0] * len(completions)


all_correct.__name__ = "accuracy"  # the default echo.success_key
