"""DAPO + EchoRL at the paper's sizes (128 prompts x 8 rollouts, 8 ranks): the update batch the trainer builds,
through EasyR1's real ``_balance_batch``, the worker dispatch (``DataProto.chunk`` per rank) and the actor's
``update_policy`` on 8 simulated ranks (threads whose ``all_reduce`` sums over the ranks). The model is a single
parameter (the forward is stubbed), so the test checks the layout and the arithmetic, not a network."""

import copy
import math
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import install_vllm_stub, run_simulated_ranks  # noqa: E402
from tests.easyr1_world import PAPER_N, PAPER_PROMPTS, PAPER_RANKS, paper_dapo_update  # noqa: E402

install_vllm_stub()

from verl.utils import seqlen_balancing  # noqa: E402
from verl.utils.seqlen_balancing import prepare_dynamic_batch  # noqa: E402

import echovl.easyr1.trainer  # noqa: E402,F401  (paper_dapo_update imports it; vllm is stubbed only now)
from echovl.easyr1.actor import EchoActor  # noqa: E402
from echovl.echo import ECHO_WEIGHT  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, PROMPTS, RANKS = PAPER_N, PAPER_PROMPTS, PAPER_RANKS  # LATE_DAPO_STEP: 300 dropped all-correct groups


class _RecordingActor(EchoActor):
    """EchoActor on one scalar parameter; records the rows of every micro-batch, per mini-batch."""

    def __init__(self, config, rank):
        module = torch.nn.Linear(1, 1, bias=False)
        module.weight.data.zero_()
        super().__init__(config, module, torch.optim.SGD(module.parameters(), lr=0.0))
        self.rank, self.world_size = rank, RANKS
        self.mini_batches = [[]]

    def _forward_micro_batch(self, micro_batch, temperature):
        self.mini_batches[-1].append(micro_batch["responses"].clone())
        pg_rows = micro_batch["response_mask"].sum(-1) > 0
        self.mini_batches[-1][-1].pg_rows = int(pg_rows.sum())
        return micro_batch["old_log_probs"] + 0.1 * self.actor_module.weight.view(())

    def _optimizer_step(self):
        self.mini_batches.append([])
        return super()._optimizer_step()


@pytest.fixture
def paper_step(tiny_lm_dir, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    monkeypatch.chdir(ROOT)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)

    def build(global_batch_size: int):
        # 4 rows per micro-batch (1 in the paper): the same layout, a quarter of the micro-batches to run
        overrides = ["worker.actor.micro_batch_size_per_device_for_update=4"]
        config, batch, update, metrics, _ = paper_dapo_update(
            tokenizer, global_batch_size, tmp_path, overrides=overrides
        )
        return config, batch, update, metrics

    return build


def _run_ranks(config, update, monkeypatch):
    """EasyR1's dispatch (one equal chunk per rank) and update_policy on every rank at once."""
    # EasyR1 all-reduces the dynamic micro-batch count on a CUDA tensor: each rank keeps its own count here
    monkeypatch.setattr(seqlen_balancing, "dist", type("NoDist", (), {"is_initialized": staticmethod(lambda: False)}))
    actor_config = copy.deepcopy(config.worker.actor)
    actor_config.global_batch_size_per_device = actor_config.global_batch_size * N // RANKS  # as FSDPWorker sets it
    shares = update.chunk(RANKS)

    def rank_update(rank):
        actor = _RecordingActor(actor_config, rank)
        metrics = actor.update_policy(shares[rank])
        return actor, metrics

    return actor_config, run_simulated_ranks(RANKS, rank_update, monkeypatch)


@pytest.mark.parametrize("global_batch_size", [64, 32])
def test_every_mini_batch_holds_its_share_of_pg_and_echo_rows(paper_step, monkeypatch, global_batch_size):
    config, batch, update, metrics = paper_step(global_batch_size)
    echo_only = update.batch["response_mask"].sum(-1) == 0
    pg_uids = set(np.asarray(update.non_tensor_batch["uid"])[~echo_only.numpy()])
    # every group DAPO kept is trained on: no group slot goes to echo rows
    assert len(pg_uids) == PROMPTS and int((~echo_only).sum()) == PROMPTS * N
    clips = int(metrics["echo/filtered_clips"])
    assert clips == 300 and int(((update.batch[ECHO_WEIGHT] > 0) & echo_only[:, None]).any(-1).sum()) == clips

    actor_config, ranks = _run_ranks(config, update, monkeypatch)
    per_device = actor_config.global_batch_size_per_device
    steps = PROMPTS * N // RANKS // per_device  # EasyR1's optimizer steps per update: 2 (batch 64) or 4 (32)
    echo_per_mini_batch = int(echo_only.sum()) // RANKS // steps
    assert echo_per_mini_batch >= clips // RANKS // steps
    for rank, (actor, rank_metrics) in enumerate(ranks):
        mini_batches = actor.mini_batches[:-1]
        assert len(mini_batches) == steps and len(rank_metrics["actor/grad_norm"]) == steps
        assert all(math.isfinite(g) for g in rank_metrics["actor/grad_norm"]), rank_metrics["actor/grad_norm"]
        for micro_batches in mini_batches:
            pg_rows = sum(m.pg_rows for m in micro_batches)
            echo_rows = sum(len(m) - m.pg_rows for m in micro_batches)
            assert (pg_rows, echo_rows) == (per_device, echo_per_mini_batch), f"rank {rank}"
        # EasyR1's PG metrics only from micro-batches with PG rows: no 0-valued entries from echo rows
        pg_micro_batches = [m for mb in mini_batches for m in mb if m.pg_rows]
        assert all(m.pg_rows == len(m) for m in pg_micro_batches)  # PG and echo rows never share a micro-batch
        assert len(rank_metrics["actor/pg_loss"]) == len(pg_micro_batches)
        assert len(rank_metrics["actor/ppo_kl"]) == len(pg_micro_batches)

        # the PG micro-batches are EasyR1's own on the DAPO batch alone (same rows, same order)
        share = batch.chunk(RANKS)[rank]
        expected = []
        for mini_batch in share.split(per_device):
            input_length = mini_batch.batch["input_ids"].size(-1)
            max_token_len = actor_config.micro_batch_size_per_device_for_update * input_length
            micro_batches, _ = prepare_dynamic_batch(mini_batch, max_token_len=max_token_len)
            expected += [m.batch["responses"] for m in micro_batches]
        assert len(expected) == len(pg_micro_batches)
        assert all(torch.equal(a, b) for a, b in zip(expected, pg_micro_batches))
