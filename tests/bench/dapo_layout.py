"""What DAPO + EchoRL trains on in one step at the paper's sizes (run by hand, not collected by pytest).

    python tests/bench/dapo_layout.py

A synthetic DAPO step late in training (``tests/easyr1_world.LATE_DAPO_STEP``: the filter kept 128 mixed groups
and dropped 300 all-correct ones; 8 rollouts each, responses of 1 to 6 short lines, prompts of 8 tokens) goes
through ``EchoTrainer``'s real ``_after_online_filtering``, EasyR1's ``_balance_batch`` and ``prepare_update``
(the entropy pass is stubbed: random entropies), with ``configs/geo3k_grpo_echo.yaml``'s sizes (8 ranks, dynamic
batching). For update batch 64 and 32 it prints the rows every rank trains on in every optimizer step, cut the
way ``EchoActor.update_policy`` cuts them, and the extra work against the DAPO batch (the baseline): rows and
tokens of the update, rows of the no-grad entropy pass. Token counts depend on this synthetic data (short
prompts, no image); row counts only on the numbers of groups.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.easyr1_stubs import install_vllm_stub  # noqa: E402

install_vllm_stub()

from echovl.easyr1.actor import ECHO_ROW, EchoActor, EchoUpdate  # noqa: E402
from echovl.testing import build_tiny_qwen2  # noqa: E402
from tests.easyr1_world import PAPER_N, PAPER_RANKS, paper_dapo_update  # noqa: E402


def step_rows(config, update) -> list[list[tuple[int, int]]]:
    """Per rank, per optimizer step: (PG rows, echo rows), from the actor's own split of its share."""
    actor_config = config.worker.actor
    actor_config.global_batch_size_per_device = actor_config.global_batch_size * PAPER_N // PAPER_RANKS
    actor = EchoActor(actor_config, torch.nn.Linear(1, 1))
    out = []
    for share in update.chunk(PAPER_RANKS):
        update = EchoUpdate(actor, share)
        pg, echo = update.split(share)
        mini_batches = pg.split(actor_config.global_batch_size_per_device)
        echo_shares = update.shares(echo, len(mini_batches))
        out.append([(len(m), len(e) if e is not None else 0) for m, e in zip(mini_batches, echo_shares)])
    return out


def main() -> None:
    from transformers import AutoTokenizer

    os.chdir(ROOT)
    with tempfile.TemporaryDirectory() as folder:
        tokenizer = AutoTokenizer.from_pretrained(build_tiny_qwen2(Path(folder) / "model"))
        for update_batch in (64, 32):
            config, batch, update, metrics, entropy_pass = paper_dapo_update(tokenizer, update_batch, folder)
            echo = update.batch[ECHO_ROW]
            tokens = update.batch["attention_mask"].sum(-1)
            full = int((batch.batch["attention_mask"].sum(-1)).sum())
            rows = step_rows(config, update)
            print(f"update batch {update_batch} prompts ({len(rows[0])} optimizer steps), 8 ranks:")
            print(f"  DAPO rows trained: {int((~echo).sum())} (every kept group: {len(batch) // PAPER_N} x {PAPER_N})")
            print(
                f"  echo rows: {int(echo.sum())} = {int(metrics['echo/filtered_clips'])} clips + "
                f"{int(echo.sum()) - int(metrics['echo/filtered_clips'])} inert fillers"
            )
            print(f"  rows per rank per step (PG, echo): {sorted({r for rank in rows for r in rank})}")
            echo_tokens = int(tokens[echo].sum())
            response_length = update.batch["responses"].shape[1]
            prompt_tokens = int(update.batch["attention_mask"][echo, :-response_length].sum())
            whole = prompt_tokens + int((update.batch["responses"][echo] != tokenizer.pad_token_id).sum())
            print(
                f"  update tokens: DAPO rows {full}, echo rows {echo_tokens} (+{echo_tokens / full:.0%}; their whole "
                f"rollouts would be {whole}, +{whole / full:.0%})"
            )
            print(
                f"  no-grad entropy pass: {entropy_pass.rows} rows (the DAPO batch's old-log-prob pass: {len(batch)})"
            )


if __name__ == "__main__":
    main()
