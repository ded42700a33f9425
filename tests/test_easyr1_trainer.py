"""EchoTrainer inside EasyR1's real ``fit`` loop on CPU (Ray and vLLM faked in-process, see tests/easyr1_world.py):
GRPO + EchoRL, DAPO + EchoRL (the dropped all-correct groups' clips), and echo off = EasyR1."""

import copy
import json
import math

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import init_gloo_group, install_vllm_stub  # noqa: E402
from tests.easyr1_world import (  # noqa: E402
    FakeActorWorkerGroup,
    FakeRewardHandle,
    ListLoader,
    write_problem_parquet,
)

install_vllm_stub()

import ray  # noqa: E402
from verl.trainer.ray_trainer import RayPPOTrainer, ResourcePoolManager  # noqa: E402
from verl.utils.dataset import RLHFDataset, collate_fn  # noqa: E402
from verl.workers.reward import AutoRewardManager  # noqa: E402

from echovl import delimiter_table, mine_echo_clips, special_table, step_index, text_mask  # noqa: E402
from echovl.easyr1.actor import ECHO_ROW, EchoActor  # noqa: E402
from echovl.easyr1.config import load_config  # noqa: E402
from echovl.easyr1.trainer import EchoTrainer  # noqa: E402
from echovl.echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT, group_ids  # noqa: E402
from echovl.traces import list_trace_files, read_trace_file  # noqa: E402

N = 4  # rollouts per prompt
PROMPTS = 4  # prompts per step


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    init_gloo_group()


@pytest.fixture
def fake_ray(monkeypatch):
    monkeypatch.setattr(ray, "get", lambda value: value)


def _build(tmp_path, tiny_lm_dir, *overrides, trainer_cls=EchoTrainer, echo_worker=True, world_size=2, data=None):
    """EasyR1's trainer on the fake world; ``data``: keyword arguments of ``write_problem_parquet``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parquet = write_problem_parquet(tmp_path / "train.parquet", 24, **(data or {}))
    config = load_config(
        [
            f"data.train_files={parquet}",
            "data.prompt_key=problem",
            "data.max_prompt_length=96",
            "data.max_response_length=96",
            f"data.rollout_batch_size={PROMPTS}",
            f"worker.rollout.n={N}",
            "worker.rollout.temperature=1.0",
            "worker.actor.global_batch_size=2",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.micro_batch_size_per_device_for_experience=2",
            "worker.actor.padding_free=false",
            "worker.actor.dynamic_batching=false",
            "worker.actor.use_torch_compile=false",
            "worker.actor.optim.lr=1e-3",
            "worker.reward.reward_function=./echovl/reward/math.py:compute_score",
            "algorithm.disable_kl=true",
            "algorithm.filter_key=accuracy",
            "trainer.logger=[file]",
            "trainer.max_steps=2",
            "trainer.n_gpus_per_node=2",
            f"trainer.save_checkpoint_path={tmp_path / 'ckpt'}",
            "echo.coef=0.5",
            "echo.trace_freq=1",
            *overrides,
        ]
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    dataset = RLHFDataset(
        str(parquet), tokenizer, None, prompt_key="problem", max_prompt_length=96, filter_overlong_prompts=False
    )
    size = config.data.mini_rollout_batch_size or config.data.rollout_batch_size
    loader = ListLoader(
        collate_fn([dataset[i] for i in range(start, start + size)]) for start in range(0, len(dataset), size)
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32)
    actor_config = config.worker.actor
    actor_config.global_batch_size_per_device = actor_config.global_batch_size * N  # one process holds every row
    actor = EchoActor(actor_config, model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    wg = FakeActorWorkerGroup(
        actor, tokenizer, n=N, response_length=96, echo_worker=echo_worker, world_size=world_size
    )
    reward = FakeRewardHandle(AutoRewardManager(config.worker.reward, tokenizer))
    trainer = trainer_cls(
        config=config,
        tokenizer=tokenizer,
        processor=None,
        train_dataloader=loader,
        val_dataloader=[],
        role_worker_mapping={},
        resource_pool_manager=ResourcePoolManager({"global_pool": [2]}, {}),
        reward_fn=reward,
        val_reward_fn=None,
    )
    return trainer, wg, model, tokenizer


def _fit(trainer, wg, monkeypatch, before_last_step=None):
    monkeypatch.setattr(RayPPOTrainer, "init_workers", lambda self: setattr(self, "actor_rollout_ref_wg", wg))
    trainer.init_workers()
    if before_last_step is not None:  # snapshot the parameters when the last step starts generating
        make_batch = trainer._make_batch_data

        def snapshot_then_make(metrics):
            if trainer.global_step == trainer.training_steps:
                before_last_step()
            return make_batch(metrics)

        trainer._make_batch_data = snapshot_then_make
    trainer.fit()
    log = trainer.config.trainer.save_checkpoint_path + "/experiment_log.jsonl"
    with open(log) as f:
        return [json.loads(line) for line in f]


def _expected_clips(batch, tokenizer, verified):
    """The core functions on the same rows: what the trainer's mining must give."""
    mask = batch.batch["attention_mask"][:, -batch.batch["responses"].shape[1] :]
    steps = step_index(batch.batch["responses"], mask, delimiter_table(tokenizer))
    text = text_mask(batch.batch["responses"], mask, special_table(tokenizer))
    return mine_echo_clips(batch.batch["old_entropy"], steps, text, verified, group_ids(batch.non_tensor_batch["uid"]))


def test_grpo_echo_inside_easyr1_fit(tmp_path, tiny_lm_dir, fake_ray, monkeypatch):
    trainer, wg, _, tokenizer = _build(tmp_path, tiny_lm_dir)
    logs = _fit(trainer, wg, monkeypatch)
    assert [entry["step"] for entry in logs] == [1, 2]
    assert len(wg.updates) == 2 and wg.log_prob_calls == [PROMPTS * N] * 2
    for entry, batch in zip(logs, wg.updates):
        echo = entry["echo"]
        assert batch.batch[ECHO_WEIGHT].dtype == torch.float32 and len(batch) == PROMPTS * N
        # verified = the reward's per-sample accuracy; the groups follow the scripted patterns
        uids = batch.non_tensor_batch["uid"]
        accuracy = torch.tensor([float(s) for s in _reward_accuracy(trainer, batch)])
        clips = _expected_clips(batch, tokenizer, accuracy >= 1.0)
        assert torch.equal(batch.batch[ECHO_WEIGHT] > 0, clips.mask)
        assert torch.equal(batch.batch[ECHO_CLIP_WEIGHT], clips.mask.any(-1).float())  # one clip per clip row
        assert echo["clips"] == len(clips) > 0
        assert echo["clip_length"] == pytest.approx(float(clips.length.double().mean()))
        assert echo["clip_step_entropy"] == pytest.approx(float(clips.step_entropy.double().mean()))
        groups = {u: accuracy[np.asarray(uids) == u] for u in set(uids)}
        all_correct = sum(bool(v.all()) for v in groups.values()) / len(groups)
        all_wrong = sum(not bool(v.any()) for v in groups.values()) / len(groups)
        assert echo["degenerate_groups"] == pytest.approx(all_correct)
        assert echo["all_wrong_groups"] == pytest.approx(all_wrong)
        mask = batch.batch["response_mask"].bool()
        assert echo["entropy"] == pytest.approx(float(batch.batch["old_entropy"][mask].double().mean()))
        assert echo["loss"] > 0 and entry["timing_s"]["echo_mining"] >= 0
        assert "pg_loss" in entry["actor"]
    # traces every step (trace_freq=1), with the clip of each mined group
    files = list_trace_files(tmp_path / "ckpt" / "echo_traces")
    assert [step for step, _ in files] == [1, 2]
    records = list(read_trace_file(files[0][1]))
    assert len(records) == 4 and records[0]["clip"] is not None and records[0]["source"] == "easyr1"
    assert "Problem" in records[0]["prompt"] and records[0]["image"] is None
    assert all(len(r["rollouts"]) == N for r in records)


def _reward_accuracy(trainer, batch):
    _, metrics = trainer.reward_fn._handle.manager.compute_reward(batch)
    return metrics["accuracy"]


def test_dapo_keeps_the_clips_of_dropped_all_correct_groups(tmp_path, tiny_lm_dir, fake_ray, monkeypatch):
    """Update batch 1 prompt (4 mini-batches), 1 rank: before the echo rows got their own layout, the last
    mini-batch held echo rows only, its PG term was 0 * 1 / 0 and the logged grad_norm NaN."""
    trainer, wg, model, tokenizer = _build(
        tmp_path,
        tiny_lm_dir,
        "algorithm.online_filtering=true",
        "data.mini_rollout_batch_size=4",
        "worker.actor.global_batch_size=1",
        world_size=1,
    )
    wg.actor.config.global_batch_size_per_device = N
    initial = EchoActor(wg.actor.config, copy.deepcopy(model))  # the parameters the last step starts from
    logs = _fit(
        trainer, wg, monkeypatch, before_last_step=lambda: initial.actor_module.load_state_dict(model.state_dict())
    )
    mini_batches = PROMPTS  # update batch 1 prompt: one optimizer step per prompt
    for entry, batch, metrics in zip(logs, wg.updates, wg.update_metrics):
        echo_only = batch.batch[ECHO_ROW]
        assert torch.equal(echo_only, batch.batch["response_mask"].sum(-1) == 0)
        uids = np.asarray(batch.non_tensor_batch["uid"])
        scores = np.asarray(batch.non_tensor_batch["echo_score"], dtype=float)
        # policy-gradient rows: every group DAPO kept (whole mixed groups), none given up for echo rows
        pg_uids = set(uids[~echo_only.numpy()])
        assert len(pg_uids) == PROMPTS and int((~echo_only).sum()) == PROMPTS * N
        for uid in pg_uids:
            group_scores = scores[uids == uid]
            assert len(group_scores) == N and 0 < group_scores.mean() < 1
        # echo rows: rollouts of dropped all-correct groups, zero advantage, PG/KL masked, clip tokens kept,
        # padded to whole micro-batches (2 rows) in every mini-batch
        clips = int(entry["echo"]["filtered_clips"])
        assert clips > 0 and int(echo_only.sum()) == entry["echo"]["filtered_rows"] == math.ceil(clips / 8) * 8
        assert torch.all(batch.batch["advantages"][echo_only] == 0)
        assert np.all(scores[echo_only.numpy()] == 1.0)
        clip_rows = (batch.batch[ECHO_WEIGHT][echo_only] > 0).any(-1)
        assert int(clip_rows.sum()) == clips
        assert len(set(uids[echo_only.numpy()][clip_rows.numpy()])) == clips  # one clip per group
        assert entry["echo"]["degenerate_groups"] > 0  # counted over every generated group
        assert entry["timing_s"]["echo_filtered_forward"] >= 0
        # every optimizer step is finite (EasyR1 skips a NaN step silently)
        assert len(metrics["actor/grad_norm"]) == mini_batches
        assert all(math.isfinite(g) for g in metrics["actor/grad_norm"]), metrics["actor/grad_norm"]
        assert len(metrics["actor/pg_loss"]) == PROMPTS * N // 2  # only PG micro-batches add PG metrics
        assert len(metrics["echo/loss"]) == mini_batches
    # each echo row's clip is the clip mine_echo_clips finds in its whole (dropped) group (last step's rounds)
    last = wg.updates[-1]
    echo_only = last.batch[ECHO_ROW]
    clip_rows = torch.nonzero(echo_only & (last.batch[ECHO_WEIGHT] > 0).any(-1)).flatten()
    main_pass, filtered_pass = wg.log_prob_calls[-2:]  # the dropped groups' pass is padded to the dispatch sizes
    assert main_pass == PROMPTS * N and filtered_pass % 2 == 0 and filtered_pass >= N
    for row in clip_rows.tolist():
        uid = last.non_tensor_batch["uid"][row]
        group = _generated_group(initial, trainer, uid)
        clips = _expected_clips(group, tokenizer, torch.ones(N, dtype=torch.bool))
        assert len(clips) == 1
        assert torch.equal(group.batch["responses"][int(clips.row[0])], last.batch["responses"][row])
        assert torch.equal(clips.mask[int(clips.row[0])], last.batch[ECHO_WEIGHT][row] > 0)
    traces = list_trace_files(tmp_path / "ckpt" / "echo_traces")
    records = list(read_trace_file(traces[0][1]))
    assert any(r["degenerate"] and r["clip"] for r in records)  # a dropped all-correct group is traced


def _generated_group(actor, trainer, uid):
    """The N rows of ``uid`` as generated, with old entropies from the actor (as the entropy pass computes them)."""
    for data, _ in trainer.reward_fn.calls:
        rows = [i for i, u in enumerate(data.non_tensor_batch["uid"]) if u == uid]
        if rows:
            group = data[rows]
            group.meta_info = dict(group.meta_info, temperature=1.0)
            _, group.batch["old_entropy"] = actor.compute_log_prob_and_entropy(group)
            return group
    raise AssertionError(f"uid {uid} was never generated")


@pytest.mark.parametrize("dapo", [False, True])
def test_echo_off_is_easyr1(tmp_path, tiny_lm_dir, fake_ray, monkeypatch, dapo):
    """echo.enable=false: the same update batches and parameters as EasyR1's own RayPPOTrainer."""
    extra = ["algorithm.online_filtering=true", "data.mini_rollout_batch_size=4"] if dapo else []
    runs = []
    for cls in (RayPPOTrainer, EchoTrainer):
        folder = tmp_path / cls.__name__
        folder.mkdir()
        trainer, wg, model, _ = _build(folder, tiny_lm_dir, "echo.enable=false", *extra, trainer_cls=cls)
        monkeypatch.setattr("uuid.uuid4", _counter())
        logs = _fit(trainer, wg, monkeypatch)
        runs.append((wg, model, logs))
    (vanilla_wg, vanilla_model, vanilla_logs), (echo_wg, echo_model, echo_logs) = runs
    for a, b in zip(vanilla_wg.updates, echo_wg.updates):
        assert set(a.batch.keys()) == set(b.batch.keys()) and ECHO_WEIGHT not in b.batch.keys()
        for key in a.batch.keys():
            assert torch.equal(a.batch[key], b.batch[key]), key
    for a, b in zip(vanilla_model.parameters(), echo_model.parameters()):
        assert torch.equal(a, b)
    assert "echo" not in vanilla_logs[0]
    assert set(echo_logs[0]["echo"]) == {"degenerate_groups", "all_wrong_groups"}


def _counter():
    import uuid

    state = {"n": 0}

    def next_uuid():
        state["n"] += 1
        return uuid.UUID(int=state["n"])

    return next_uuid


@pytest.mark.parametrize(
    "overrides",
    [
        ("echo.selection=soft", "echo.soft_temperature=0.5", "echo.start_step=2"),
        ("echo.selection=top_k", "echo.top_k=2", "algorithm.online_filtering=true", "data.mini_rollout_batch_size=4"),
    ],
    ids=["grpo-soft-start2", "dapo-top2"],
)
def test_selection_variants_and_start_step_inside_easyr1_fit(tmp_path, tiny_lm_dir, fake_ray, monkeypatch, overrides):
    """top_k / soft: the update batch carries the core's clip weights (PG rows and DAPO echo rows), the logs the
    step's lambda and the weights; before echo.start_step the update is EasyR1's (no echo keys)."""
    from echovl.easyr1.actor import ECHO_COEF

    trainer, wg, _, tokenizer = _build(tmp_path, tiny_lm_dir, *overrides)
    logs = _fit(trainer, wg, monkeypatch)
    echo, steps_with_echo_rows = trainer.echo, 0
    for step, (entry, batch) in enumerate(zip(logs, wg.updates), start=1):
        assert entry["echo"]["coef"] == (0.5 if step >= echo.start_step else 0.0)
        if step < echo.start_step:
            assert ECHO_WEIGHT not in batch.batch.keys() and ECHO_COEF not in batch.meta_info
            continue
        assert batch.meta_info[ECHO_COEF] == 0.5
        pg_rows = ~batch.batch[ECHO_ROW] if ECHO_ROW in batch.batch.keys() else torch.ones(len(batch), dtype=bool)
        main = batch[torch.nonzero(pg_rows).flatten().tolist()]
        accuracy = torch.tensor([float(s) for s in _reward_accuracy(trainer, main)])
        mask = main.batch["attention_mask"][:, -main.batch["responses"].shape[1] :]
        steps = step_index(main.batch["responses"], mask, delimiter_table(tokenizer))
        text = text_mask(main.batch["responses"], mask, special_table(tokenizer))
        clips = mine_echo_clips(
            main.batch["old_entropy"],
            steps,
            text,
            accuracy >= 1.0,
            group_ids(main.non_tensor_batch["uid"]),
            **echo.mining_kwargs(),
        )
        torch.testing.assert_close(main.batch[ECHO_WEIGHT], clips.token_weight)
        expected_weight = torch.zeros(len(main)).index_add_(0, clips.row, clips.weight)
        torch.testing.assert_close(main.batch[ECHO_CLIP_WEIGHT], expected_weight)
        assert entry["echo"]["clips"] >= len(clips) > 0 and entry["echo"]["clips_per_group"] > 1
        assert 0 < entry["echo"]["clip_weight_max"] <= 1
        if ECHO_ROW in batch.batch.keys() and bool(batch.batch[ECHO_ROW].any()):  # DAPO: weighted echo rows
            echo_rows = batch.batch[ECHO_ROW]
            weights = batch.batch[ECHO_CLIP_WEIGHT][echo_rows]
            assert torch.all((weights == 0) | (weights >= 1))  # top_k: whole clips; fillers 0
            assert torch.equal((batch.batch[ECHO_WEIGHT][echo_rows] > 0).any(-1), weights > 0)  # fillers: none
            assert float(weights.sum()) == entry["echo"]["filtered_clips"]
            steps_with_echo_rows += 1
    assert steps_with_echo_rows == (2 if trainer.config.algorithm.online_filtering else 0)
    records = [r for _, path in list_trace_files(tmp_path / "ckpt" / "echo_traces") for r in read_trace_file(path)]
    mined = [r for r in records if r["clips"]]
    assert mined and all(c["weight"] > 0 for r in mined for c in r["clips"])
    if echo.selection == "soft":
        assert all(sum(c["weight"] for c in r["clips"]) == pytest.approx(1.0, abs=1e-5) for r in mined)


@pytest.mark.parametrize(
    "overrides",
    [
        ("echo.coef_schedule=adaptive", "algorithm.online_filtering=true", "data.mini_rollout_batch_size=4"),
        ("echo.coef_schedule=linear", "echo.coef_warmup_steps=2", "echo.start_step=2", "trainer.max_steps=3"),
    ],
    ids=["dapo-adaptive", "grpo-linear-start2-warmup2"],
)
def test_coef_schedules_inside_easyr1_fit(tmp_path, tiny_lm_dir, fake_ray, monkeypatch, overrides):
    """echo.coef_schedule, lambda_t per docs/echo_settings.md (coef 0.5): ``adaptive`` is ``coef x d_t``, d_t the
    fraction of the step's groups whose rollouts are all verified, with DAPO of every group generated in the step
    (not only the mixed ones it keeps); ``linear`` is ``coef x min(1, (t - max(start_step, 1) + 1) / W)`` from
    start_step on, 0 before. Each step logs it as ``echo/coef`` and the actor receives it."""
    from echovl.easyr1.actor import ECHO_COEF

    trainer, wg, _, _ = _build(tmp_path, tiny_lm_dir, *overrides)
    # every (uid, accuracy) the reward function scores, collected per training step (at its update)
    handle, scored, per_step = trainer.reward_fn._handle, [], []

    def scoring(data):
        result = FakeRewardHandle.remote(handle, data)
        scored.extend(zip(data.non_tensor_batch["uid"], result[1]["accuracy"]))
        return result

    handle.remote = scoring
    update = wg.update_actor

    def update_actor(data):
        per_step.append(list(scored))
        scored.clear()
        return update(data)

    wg.update_actor = update_actor
    logs = _fit(trainer, wg, monkeypatch)
    steps = trainer.config.trainer.max_steps
    assert [entry["step"] for entry in logs] == list(range(1, steps + 1)) and len(per_step) == steps
    schedule, start, warmup = trainer.echo.coef_schedule, trainer.echo.start_step, trainer.echo.coef_warmup_steps
    for t, (entry, batch, rows) in enumerate(zip(logs, wg.updates, per_step), start=1):
        groups: dict[str, list[float]] = {}
        for uid, accuracy in rows:
            groups.setdefault(uid, []).append(float(accuracy))
        assert all(len(scores) >= N for scores in groups.values())
        fraction = sum(all(a >= 1.0 for a in scores) for scores in groups.values()) / len(groups)
        if schedule == "adaptive":
            expected = 0.5 * fraction
            assert entry["echo"]["degenerate_groups"] == pytest.approx(fraction)
            if trainer.config.algorithm.online_filtering:  # DAPO generated more groups than it kept...
                assert len(groups) > PROMPTS and fraction > 0  # ...and the kept ones are all mixed
        else:
            expected = 0.0 if t < start else 0.5 * min(1.0, (t - max(start, 1) + 1) / warmup)
        assert entry["echo"]["coef"] == pytest.approx(expected, rel=1e-12, abs=0), t
        if expected > 0:
            assert batch.meta_info[ECHO_COEF] == pytest.approx(expected, rel=1e-12, abs=0)
            assert bool(batch.batch[ECHO_WEIGHT].any())
        else:
            assert ECHO_WEIGHT not in batch.batch.keys() and ECHO_COEF not in batch.meta_info
    if schedule == "linear":  # 0 before start_step, then half way, then coef: every step a different lambda
        coefs = [entry["echo"]["coef"] for entry in logs]
        assert len(set(coefs)) == len(coefs), coefs
