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
from tests.easyr1_world import ListLoader, add_experience, synthetic_round  # noqa: E402

install_vllm_stub()

import ray  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.trainer.ray_trainer import ResourcePoolManager  # noqa: E402
from verl.utils import seqlen_balancing  # noqa: E402
from verl.utils.seqlen_balancing import prepare_dynamic_batch  # noqa: E402

from echovl.easyr1.actor import ECHO_MASK, EchoActor  # noqa: E402
from echovl.easyr1.config import load_config  # noqa: E402
from echovl.easyr1.trainer import EchoTrainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N, PROMPTS, RANKS = 8, 128, 8
RESPONSE_LENGTH = 64
# one DAPO step late in training: 300 all-correct groups dropped by the filter while it collected 128 mixed ones
PATTERNS = ["mixed"] * 128 + ["all_correct"] * 300 + ["all_wrong"] * 20


class _EntropyPass:
    """The actor worker group as the trainer sees it: 8 ranks; ``compute_log_probs`` gives random old log-probs and
    entropies (the dropped groups' entropy pass)."""

    world_size = RANKS

    def compute_log_probs(self, data):
        assert len(data) % RANKS == 0
        generator = torch.Generator().manual_seed(len(data))
        shape = data.batch["responses"].shape
        tensors = {"old_log_probs": -torch.rand(shape, generator=generator), "old_entropy": torch.rand(shape) * 2}
        return DataProto.from_dict(tensors=tensors)


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
    monkeypatch.setattr(ray, "get", lambda value: value)
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    generated, accuracy = synthetic_round(tokenizer, PATTERNS, n=N, response_length=RESPONSE_LENGTH, seed=3)
    reward = (generated.batch["token_level_scores"], {"accuracy": accuracy})

    def build(global_batch_size: int):
        config = load_config(
            [
                "config=configs/geo3k_grpo_echo.yaml",  # the paper's sizes: 128 x 8, dynamic batching, 8 GPUs
                "algorithm.online_filtering=true",
                "algorithm.disable_kl=true",
                f"worker.actor.global_batch_size={global_batch_size}",
                "worker.actor.micro_batch_size_per_device_for_update=4",  # (1 in the paper: 4x the micro-batches)
                "trainer.max_steps=1",
                f"trainer.save_checkpoint_path={tmp_path}",
                "echo.trace_freq=0",
            ]
        )
        trainer = EchoTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=None,
            train_dataloader=ListLoader([{}]),
            val_dataloader=[],
            role_worker_mapping={},
            resource_pool_manager=ResourcePoolManager({"global_pool": [RANKS]}, {}),
            reward_fn=object(),
            val_reward_fn=None,
        )
        trainer.actor_rollout_ref_wg = _EntropyPass()
        trainer.global_step = 1
        trainer.reward_fn.calls = [(generated, reward)]
        # what EasyR1's _make_batch_data returns: the kept (mixed) groups, in generation order
        kept = [
            i for i, uid in enumerate(generated.non_tensor_batch["uid"]) if PATTERNS[int(uid.split("-")[1])] == "mixed"
        ]
        batch = trainer._after_online_filtering(generated[kept][: PROMPTS * N])
        trainer._balance_batch(batch, metrics={})  # EasyR1's fit, as is
        batch.meta_info = {"temperature": 0.6, "global_token_num": batch.batch["attention_mask"].sum(-1).tolist()}
        add_experience(batch, seed=1)
        update, metrics = trainer.prepare_update(batch)
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
    assert clips == 300 and int((update.batch[ECHO_MASK] & echo_only[:, None]).any(-1).sum()) == clips

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
