"""The echo term's scale in EasyR1's update: its contribution to every optimizer step is exactly
``coef * (mean over the step's clips of each clip's mean NLL)``, checked against a plain autograd reference.

Two simulated ranks (threads whose ``all_reduce`` sums over the ranks, see ``run_simulated_ranks``) run
``EchoActor.update_policy`` on their shares of a DAPO + echo update batch (PG rows with clips of their own, echo
rows of dropped all-correct groups with the attention cut at the clip end, an inert filler), and EasyR1's own
``DataParallelPPOActor`` on the PG rows alone. Each optimizer step's gradient is averaged over the ranks, as
FSDP averages it; the difference between the two actors must be ``coef x`` the gradient of the reference. That
also proves the PG term is EasyR1's, untouched by the echo rows, in ``loss_avg_mode`` token and seq.
"""

import copy

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import (  # noqa: E402
    actor_config,
    build_rollout_batch,
    clip_tensors,
    install_vllm_stub,
    reference_clip_nll,
    run_simulated_ranks,
    write_prompt_parquet,
)

install_vllm_stub()

from verl.utils import seqlen_balancing  # noqa: E402
from verl.workers.actor.dp_actor import DataParallelPPOActor  # noqa: E402

from echovl.config import EchoConfig  # noqa: E402
from echovl.easyr1.actor import ECHO_COEF, ECHO_ROW, EchoActor  # noqa: E402
from echovl.easyr1.filtering import echo_rows, layout_update_batch  # noqa: E402
from echovl.echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT  # noqa: E402

TEMPERATURE = 0.7
COEF = 0.5
RANKS, MINI_BATCHES = 2, 2
PG_ROWS, CLIP_ROWS = (1, 2, 6), (8, 9, 10)  # rows 0-7: DAPO's kept rows; 8-11: a dropped all-correct group


@pytest.fixture(scope="module")
def lm_model(tiny_lm_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def rollouts(tiny_lm_dir, lm_model, tmp_path_factory):
    """12 rollouts (3 prompts x 4) with old log-probs, KL reference, advantages and prefix clips."""
    parquet = write_prompt_parquet(tmp_path_factory.mktemp("scale") / "train.parquet", images=False)
    batch, _, _ = build_rollout_batch(tiny_lm_dir, parquet, n=4, temperature=TEMPERATURE)
    batch.non_tensor_batch["row_id"] = np.arange(len(batch))
    batch.batch["old_log_probs"] = DataParallelPPOActor(actor_config(len(batch)), lm_model).compute_log_prob(batch)
    batch.batch["ref_log_probs"] = batch.batch["old_log_probs"] - 0.05
    mask = batch.batch["response_mask"]
    batch.batch["advantages"] = torch.randn(len(batch), 1, generator=torch.Generator().manual_seed(0)) * mask
    clips = torch.zeros(mask.shape, dtype=torch.bool)
    for row in PG_ROWS + CLIP_ROWS:  # a prefix of the response (text tokens would skip specials; any subset works)
        clips[row, : max(1, int(mask[row].sum()) * (1 + row % 3) // 4)] = True
    clips[9, 1] = False  # not contiguous: a clip skips non-text tokens
    batch.batch.update(clip_tensors(clips))
    return batch


def _update_batch(rollouts):
    """Rows 0-7 as the DAPO batch; rows 8-10 as echo rows (one filler added), laid out over 2 ranks x 2 steps."""
    main = rollouts[list(range(8))]
    main.batch[ECHO_ROW] = torch.zeros(len(main), dtype=torch.bool)
    source = rollouts[[8, 9, 10, 11]]
    rows = echo_rows(source, torch.tensor([0, 1, 2]), 4, like=main)
    assert not torch.equal(rows.batch["attention_mask"], source.batch["attention_mask"])  # cut at the clip ends
    return main, layout_update_batch(main, rows, RANKS, MINI_BATCHES)


class _RecordsSteps:
    """Keeps each optimizer step's gradients (and takes no step: every step sees the same weights)."""

    def _optimizer_step(self):
        grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone() for p in self.actor_module.parameters()
        ]
        self.step_grads.append(grads)
        self.actor_module.zero_grad(set_to_none=True)
        return torch.tensor(1.0)


class _EchoSteps(_RecordsSteps, EchoActor):
    pass


class _EasyR1Steps(_RecordsSteps, DataParallelPPOActor):
    pass


def _mean_over_ranks(ranks, step):
    return [torch.stack(grads).mean(0) for grads in zip(*(actor.step_grads[step] for actor, _ in ranks))]


@pytest.mark.parametrize("dynamic_batching", [False, True])
@pytest.mark.parametrize("loss_avg_mode", ["token", "seq"])
def test_echo_adds_coef_times_the_mean_clip_nll_to_every_step(
    lm_model, rollouts, monkeypatch, loss_avg_mode, dynamic_batching
):
    monkeypatch.setattr(seqlen_balancing, "dist", type("NoDist", (), {"is_initialized": staticmethod(lambda: False)}))
    main, update = _update_batch(rollouts)
    update.meta_info[ECHO_COEF] = COEF  # λ of the step, as the trainer sets it
    config = actor_config(len(main) // RANKS // MINI_BATCHES, micro=1, dynamic_batching=dynamic_batching)
    config.loss_avg_mode = loss_avg_mode
    config.use_kl_loss, config.kl_coef, config.kl_penalty = True, 0.1, "low_var_kl"
    config.clip_ratio_low = config.clip_ratio_high = 0.01  # some tokens clipped: the PG term is not trivial

    def run(actor_cls, shares, **kwargs):
        def rank_update(rank):
            actor = actor_cls(config, copy.deepcopy(lm_model).train(), **kwargs)
            actor.rank, actor.world_size, actor.step_grads = rank, RANKS, []
            return actor, actor.update_policy(shares[rank])

        return run_simulated_ranks(RANKS, rank_update, monkeypatch)

    with_echo = run(_EchoSteps, update.chunk(RANKS), echo=EchoConfig())
    easyr1 = run(_EasyR1Steps, main.chunk(RANKS))
    for actor, _ in with_echo + easyr1:
        assert len(actor.step_grads) == MINI_BATCHES

    for step in range(MINI_BATCHES):
        # the step's clips: every rank's PG rows and echo share of this mini-batch (the actor's consecutive cuts)
        clip_ids = []
        for share in update.chunk(RANKS):
            pg_rows = [i for i in range(len(share)) if not share.batch[ECHO_ROW][i]]
            echo_rows_ = [i for i in range(len(share)) if share.batch[ECHO_ROW][i]]
            per_step = len(pg_rows) // MINI_BATCHES, len(echo_rows_) // MINI_BATCHES
            rows = pg_rows[step * per_step[0] : (step + 1) * per_step[0]]
            rows += echo_rows_[step * per_step[1] : (step + 1) * per_step[1]]
            clip_ids += [int(share.non_tensor_batch["row_id"][i]) for i in rows if share.batch[ECHO_WEIGHT][i].any()]
        assert len(clip_ids) >= 2 and any(i in CLIP_ROWS for i in clip_ids)

        reference = copy.deepcopy(lm_model).train()
        j_echo = reference_clip_nll(reference, rollouts, clip_ids, TEMPERATURE)  # over the whole rollouts
        (COEF * j_echo).backward()
        echo_step = [a - b for a, b in zip(_mean_over_ranks(with_echo, step), _mean_over_ranks(easyr1, step))]
        for got, param in zip(echo_step, reference.parameters()):
            expected = torch.zeros_like(param) if param.grad is None else param.grad
            torch.testing.assert_close(got, expected, atol=2e-6, rtol=2e-4)
        logged = np.mean([metrics["echo/loss"][step] for _, metrics in with_echo])
        assert logged == pytest.approx(float(j_echo.detach()), rel=1e-5)
    for (_, echo_metrics), (_, easyr1_metrics) in zip(with_echo, easyr1):  # EasyR1's PG metrics, as many and equal
        for key in ("actor/pg_loss", "actor/ppo_kl", "actor/pg_clipfrac_higher", "actor/entropy_loss"):
            assert echo_metrics[key] == pytest.approx(easyr1_metrics[key], rel=1e-5, abs=1e-7), key


def _nested_clip_weights(rollouts):
    """Two nested prefix clips per clip row, weights 0.7 (short) and 0.3 (long), as top_k / soft lay them out:
    ``echo_weight`` [B, R] (sum of weight / length over the clips holding a token) and ``echo_clip_weight`` [B]."""
    mask = rollouts.batch["response_mask"]
    token_weight = torch.zeros(mask.shape)
    clips = {}  # row -> [(length, weight)]
    for row in PG_ROWS + CLIP_ROWS:
        full = int(mask[row].sum())
        clips[row] = [(max(1, full // 4), 0.7), (max(2, full // 2), 0.3)]
        for length, weight in clips[row]:
            token_weight[row, :length] += weight / length
    return token_weight, clips


def test_weighted_clips_add_coef_times_the_weighted_mean_clip_nll_to_every_step(lm_model, rollouts, monkeypatch):
    """``echo.selection`` top_k / soft: nested clips with weights; each step gets
    ``coef * sum_c w_c * meanNLL(c) / sum_c w_c`` over the step's clips (PG rows and DAPO echo rows)."""
    monkeypatch.setattr(seqlen_balancing, "dist", type("NoDist", (), {"is_initialized": staticmethod(lambda: False)}))
    weighted = copy.deepcopy(rollouts)
    token_weight, clips = _nested_clip_weights(weighted)
    weighted.batch[ECHO_WEIGHT] = token_weight
    weighted.batch[ECHO_CLIP_WEIGHT] = torch.tensor(
        [sum(w for _, w in clips.get(r, [])) for r in range(len(weighted))]
    )
    main, update = _update_batch(weighted)
    step_coef = 0.25  # the trainer's lambda of this step (meta_info), not echo.coef
    update.meta_info[ECHO_COEF] = step_coef
    config = actor_config(len(main) // RANKS // MINI_BATCHES, micro=1)

    def run(actor_cls, shares, **kwargs):
        def rank_update(rank):
            actor = actor_cls(config, copy.deepcopy(lm_model).train(), **kwargs)
            actor.rank, actor.world_size, actor.step_grads = rank, RANKS, []
            return actor, actor.update_policy(shares[rank])

        return run_simulated_ranks(RANKS, rank_update, monkeypatch)

    with_echo = run(_EchoSteps, update.chunk(RANKS), echo=EchoConfig(coef=COEF, selection="soft"))
    easyr1 = run(_EasyR1Steps, main.chunk(RANKS))
    responses = weighted.batch["responses"].shape[1]
    for step in range(MINI_BATCHES):
        row_ids = []
        for share in update.chunk(RANKS):
            is_echo = share.batch[ECHO_ROW].tolist()
            pg_rows = [i for i, e in enumerate(is_echo) if not e]
            echo_rows_ = [i for i, e in enumerate(is_echo) if e]
            per_step = len(pg_rows) // MINI_BATCHES, len(echo_rows_) // MINI_BATCHES
            rows = pg_rows[step * per_step[0] : (step + 1) * per_step[0]]
            rows += echo_rows_[step * per_step[1] : (step + 1) * per_step[1]]
            row_ids += [int(share.non_tensor_batch["row_id"][i]) for i in rows if share.batch[ECHO_WEIGHT][i].any()]
        reference = copy.deepcopy(lm_model).train()
        total, weight_sum = 0.0, 0.0
        for row in row_ids:
            for length, weight in clips[row]:
                weighted.batch["ref_clip"] = torch.zeros(len(weighted), responses, dtype=torch.bool)
                weighted.batch["ref_clip"][row, :length] = True
                total = total + weight * reference_clip_nll(reference, weighted, [row], TEMPERATURE, "ref_clip")
                weight_sum += weight
        (step_coef * total / weight_sum).backward()
        echo_step = [a - b for a, b in zip(_mean_over_ranks(with_echo, step), _mean_over_ranks(easyr1, step))]
        for got, param in zip(echo_step, reference.parameters()):
            expected = torch.zeros_like(param) if param.grad is None else param.grad
            torch.testing.assert_close(got, expected, atol=2e-6, rtol=2e-4)
        logged = np.mean([metrics["echo/loss"][step] for _, metrics in with_echo])
        assert logged == pytest.approx(float(total.detach()) / weight_sum, rel=1e-5)
