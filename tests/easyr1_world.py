"""An in-process stand-in for EasyR1's Ray side, so that EasyR1's own ``RayPPOTrainer.fit`` runs on CPU.

What is real: EasyR1's trainer loop (``fit``, ``_make_batch_data`` with DAPO's filter, ``_balance_batch``, the
advantage estimators, metrics, the file logger, checkpoint bookkeeping), its dataset and collate function, its
reward manager with echovl's math reward, and the actor: an :class:`~echovl.easyr1.actor.EchoActor` on a tiny
Qwen2 doing the old-log-prob pass and the PPO update. What is faked: Ray (``ray.get`` of a plain value), the
vLLM rollout (scripted responses, laid out like vLLM's), and the worker-group dispatch (checked for EasyR1's
divisibility rules, then run in one process).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tests.easyr1_stubs import vllm_layout

PATTERNS = ("all_correct", "mixed", "all_wrong")

LINES = (
    "We look at the numbers.",
    "Adding them step by step gives the sum.",
    "So the total is {answer}.",
    "Check: the sum is right.",
)


def problem(index: int) -> tuple[str, str, str]:
    """Problem text, answer and correctness pattern of prompt ``index`` (patterns cycle)."""
    a, b = 3 + index, 11 + 2 * index
    return f"Problem {index}: compute {a} + {b}.", str(a + b), PATTERNS[index % len(PATTERNS)]


def expert_solution(index: int, long: bool = False) -> str:
    """A correct expert trace for prompt ``index`` (LUFFY's expert row, UFT's hints); ``long``: too long to use."""
    _, answer, _ = problem(index)
    lines = ["We add the two numbers.", "Adding them gives the sum."] * (40 if long else 1)
    return "<think>\n" + "\n".join(lines) + "\n</think>\nThe answer is \\boxed{" + answer + "}."


def write_problem_parquet(path: Path, count: int, solutions: bool = False, long_every: int = 0) -> Path:
    """``problem``, ``answer`` (and, with ``solutions``, ``solution``: every ``long_every``-th one too long)."""
    import pandas as pd

    rows = [dict(zip(("problem", "answer"), problem(i)[:2])) for i in range(count)]
    if solutions:
        for i, row in enumerate(rows):
            row["solution"] = expert_solution(i, long=bool(long_every) and i % long_every == long_every - 1)
    pd.DataFrame(rows).to_parquet(path)
    return path


def scripted_response(index: int, rollout: int, n: int) -> str:
    """Correct (boxed answer) or wrong per the prompt's pattern; the wording varies with the rollout."""
    _, answer, pattern = problem(index)
    correct = pattern == "all_correct" or (pattern == "mixed" and rollout < n // 2)
    shown = answer if correct else str(int(answer) + 1)
    lines = [line.format(answer=shown) for line in LINES[: 2 + rollout % 3]]
    return "<think>\n" + "\n".join(lines) + "\n</think>\nThe answer is \\boxed{" + shown + "}."


class FakeRewardHandle:
    """``ray.remote(AutoRewardManager).remote(...)`` stand-in: ``compute_reward.remote`` computes at once (the
    tests patch ``ray.get`` to return plain values)."""

    def __init__(self, manager):
        self.manager = manager
        self.compute_reward = self

    def remote(self, data):
        return self.manager.compute_reward(data)


class FakeActorWorkerGroup:
    """The actor/rollout worker group of EasyR1, in one process, on CPU."""

    def __init__(self, actor, tokenizer, *, n: int, response_length: int, world_size: int = 2, echo_worker=True):
        self.actor = actor
        self.tokenizer = tokenizer
        self.n = n
        self.response_length = response_length
        self.world_size = world_size
        self.echo_worker = echo_worker
        self.generated = []  # every generation round's gen batch
        self.log_prob_calls = []
        self.updates = []
        self.update_metrics = []  # the actor's metrics of each update, per mini-batch (before EasyR1 averages them)

    # -- dispatch rules of Dispatch.DP_COMPUTE_PROTO
    def _check_dispatch(self, data, micro: int | None = None):
        assert len(data) % self.world_size == 0, f"{len(data)} rows do not split over {self.world_size} ranks"
        if micro and not self.actor.config.dynamic_batching:
            per_rank = len(data) // self.world_size
            assert per_rank % micro == 0, f"{per_rank} rows per rank do not split into micro-batches of {micro}"

    def init_model(self):
        pass

    def prepare_rollout_engine(self):
        pass

    def release_rollout_engine(self):
        pass

    def save_checkpoint(self, path, save_model_only=False):
        Path(path).mkdir(parents=True, exist_ok=True)  # the real workers write the model there

    def generate_sequences(self, prompts):
        """Scripted rollouts; like vLLM, ``meta_info`` may override ``n``, and rollout ``k`` of a prompt is the
        sampling seed's child ``seed + k`` (``seed`` 1 by default, EasyR1's)."""
        from verl.protocol import DataProto

        self._check_dispatch(prompts)
        self.generated.append(prompts)
        eos, pad = self.tokenizer.convert_tokens_to_ids("<|im_end|>"), self.tokenizer.pad_token_id
        count, first = prompts.meta_info.get("n", self.n), prompts.meta_info.get("seed", 1) - 1
        texts = []
        for raw in prompts.non_tensor_batch["raw_prompt_ids"]:
            index = int(re.search(r"Problem (\d+):", self.tokenizer.decode(list(raw))).group(1))
            texts += [scripted_response(index, first + k, self.n) for k in range(count)]
        rows = (
            prompts.batch[k].repeat_interleave(count, dim=0) for k in ("input_ids", "attention_mask", "position_ids")
        )
        ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        tensors = vllm_layout(*rows, ids, eos=eos, pad=pad, length=self.response_length)
        meta = dict(prompts.meta_info, eos_token_id=eos, pad_token_id=pad)
        return DataProto.from_dict(tensors=tensors, meta_info=meta)

    def compute_log_probs(self, data):
        from verl.protocol import DataProto

        self._check_dispatch(data, self.actor.config.micro_batch_size_per_device_for_experience)
        self.log_prob_calls.append(len(data))
        data.meta_info["temperature"] = 1.0
        if self.echo_worker and self.actor.echo.active:
            log_probs, entropy = self.actor.compute_log_prob_and_entropy(data)
            tensors = {"old_log_probs": log_probs, "old_entropy": entropy}
        else:
            tensors = {"old_log_probs": self.actor.compute_log_prob(data)}
        return DataProto.from_dict(tensors=tensors, meta_info={"temperature": 1.0})

    def update_actor(self, data):
        from verl.protocol import DataProto

        self._check_dispatch(data, self.actor.config.micro_batch_size_per_device_for_update)
        self.updates.append(data)
        metrics = self.actor.update_policy(data)
        self.update_metrics.append(metrics)
        return DataProto(non_tensor_batch={k: np.array(v if isinstance(v, list) else [v]) for k, v in metrics.items()})


class ListLoader(list):
    """A list of collated batches with the ``state_dict`` EasyR1's checkpointing asks for."""

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


# ------------------------------------------------------------------------------------------- synthetic rollouts

STEP_LINES = ("We look at the numbers.", "Adding them gives the sum.", "Check the sum again.", "So the total is 7.")


def synthetic_round(tokenizer, patterns, *, n: int, response_length: int, prompt_length: int = 8, seed: int = 0):
    """A scored generation round laid out like EasyR1's (vLLM's tensors, ``uid`` per group), without a model.

    ``patterns`` gives each group's outcome (``all_correct``, ``mixed``: the first half of its rollouts correct,
    ``all_wrong``). Responses have 1 to 6 reasoning lines, so lengths and step counts vary. Returns the
    ``DataProto`` (with ``token_level_scores``) and the per-row ``accuracy`` scores.
    """
    import torch
    from verl.protocol import DataProto

    generator = torch.Generator().manual_seed(seed)
    rows = len(patterns) * n
    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    pool = ["\n".join(STEP_LINES[(k + i) % 4] for i in range(1 + k % 6)) for k in range(12)]
    pool_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in pool]
    picks = torch.randint(len(pool), (rows,), generator=generator).tolist()
    prompts = torch.randint(300, (rows, prompt_length), generator=generator)
    tensors = vllm_layout(
        prompts,
        torch.ones(rows, prompt_length, dtype=torch.long),
        torch.arange(prompt_length).expand(rows, -1),
        [pool_ids[k] for k in picks],
        eos=eos,
        pad=pad,
        length=response_length,
    )
    accuracy = []
    for pattern in patterns:
        accuracy += [float(pattern == "all_correct" or (pattern == "mixed" and k < n // 2)) for k in range(n)]
    scores = torch.zeros(rows, response_length)
    last = tensors["response_mask"].sum(-1) - 1
    scores[torch.arange(rows), last] = torch.tensor(accuracy)
    tensors["token_level_scores"] = scores
    uids = np.array([f"{seed}-{g}" for g in range(len(patterns)) for _ in range(n)], dtype=object)
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": uids}), accuracy


def add_experience(batch, *, seed: int = 0) -> None:
    """What EasyR1's ``fit`` adds before ``update_actor`` (old log-probs and entropies, advantages), random."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    mask = batch.batch["response_mask"].float()
    shape = mask.shape
    batch.batch["old_log_probs"] = -torch.rand(shape, generator=generator) * 3 * mask
    batch.batch["old_entropy"] = torch.rand(shape, generator=generator) * 2 * mask
    batch.batch["advantages"] = torch.randn(shape[0], 1, generator=generator) * mask
    batch.batch["returns"] = batch.batch["advantages"].clone()
    batch.batch["token_level_rewards"] = batch.batch["token_level_scores"].clone()


# ------------------------------------------------------------------------------------------- a DAPO step at paper sizes

PAPER_RANKS, PAPER_N, PAPER_PROMPTS = 8, 8, 128
LATE_DAPO_STEP = ["mixed"] * 128 + ["all_correct"] * 300 + ["all_wrong"] * 20
"""One DAPO step late in training: 300 all-correct groups dropped while the filter collected 128 mixed ones."""


class EntropyPass:
    """The actor worker group as the trainer sees it: ``world_size`` ranks; ``compute_log_probs`` gives random old
    log-probs and entropies (the dropped groups' entropy pass) and counts the rows it was given."""

    def __init__(self, world_size: int = PAPER_RANKS):
        self.world_size = world_size
        self.rows = 0

    def compute_log_probs(self, data):
        import torch
        from verl.protocol import DataProto

        assert len(data) % self.world_size == 0
        self.rows += len(data)
        generator = torch.Generator().manual_seed(len(data))
        shape = data.batch["responses"].shape
        old_log_probs, entropy = -torch.rand(shape, generator=generator), torch.rand(shape, generator=generator) * 2
        tensors = {"old_log_probs": old_log_probs, "old_entropy": entropy}
        return DataProto.from_dict(tensors=tensors)


def paper_dapo_update(tokenizer, global_batch_size: int, checkpoint_dir, *, patterns=LATE_DAPO_STEP, overrides=()):
    """The update batch ``EchoTrainer`` hands to ``update_actor`` for one synthetic DAPO step at the paper's sizes
    (``configs/geo3k_grpo_echo.yaml``: 128 prompts x 8 rollouts, 8 ranks; run from the repository root), through
    EasyR1's real ``_balance_batch``. Returns ``(config, dapo_batch, update_batch, echo_metrics, entropy_pass)``.
    """
    from unittest import mock

    import ray
    from verl.trainer.ray_trainer import ResourcePoolManager

    from echovl.easyr1.config import load_config
    from echovl.easyr1.trainer import EchoTrainer

    generated, accuracy = synthetic_round(tokenizer, patterns, n=PAPER_N, response_length=64, seed=3)
    config = load_config(
        [
            "config=configs/geo3k_grpo_echo.yaml",  # the paper's sizes: 128 x 8, dynamic batching, 8 GPUs
            "algorithm.online_filtering=true",
            "algorithm.disable_kl=true",
            f"worker.actor.global_batch_size={global_batch_size}",
            "trainer.max_steps=1",
            f"trainer.save_checkpoint_path={checkpoint_dir}",
            "echo.trace_freq=0",
            *overrides,
        ]
    )
    trainer = EchoTrainer(
        config=config,
        tokenizer=tokenizer,
        processor=None,
        train_dataloader=ListLoader([{}]),
        val_dataloader=[],
        role_worker_mapping={},
        resource_pool_manager=ResourcePoolManager({"global_pool": [PAPER_RANKS]}, {}),
        reward_fn=object(),
        val_reward_fn=None,
    )
    trainer.actor_rollout_ref_wg = entropy_pass = EntropyPass()
    trainer.global_step = 1
    trainer.reward_fn.calls = [(generated, (generated.batch["token_level_scores"], {"accuracy": accuracy}))]
    # what EasyR1's _make_batch_data returns: the kept (mixed) groups, in generation order
    kept = [
        i for i, uid in enumerate(generated.non_tensor_batch["uid"]) if patterns[int(uid.split("-")[1])] == "mixed"
    ]
    with mock.patch.object(ray, "get", lambda value: value):
        batch = trainer._after_online_filtering(generated[kept][: PAPER_PROMPTS * PAPER_N])
        trainer._balance_batch(batch, metrics={})  # EasyR1's fit, as is
        batch.meta_info = {"temperature": 0.6, "global_token_num": batch.batch["attention_mask"].sum(-1).tolist()}
        add_experience(batch, seed=1)
        update, metrics = trainer.prepare_update(batch)
    return config, batch, update, metrics, entropy_pass
