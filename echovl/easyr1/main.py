"""``python -m echovl.train``: EasyR1's ``verl.trainer.main`` with echovl's config, worker and trainer.

Same conventions as EasyR1: ``config=FILE.yaml`` plus ``dotted.key=value`` overrides, Ray started like EasyR1
starts it, one ``Runner`` actor that builds the tokenizer, processor, reward managers and dataloaders and runs
the trainer. The loggers are EasyR1's (``trainer.logger``: console, file, wandb, swanlab, tensorboard, mlflow).

Several nodes: see :mod:`.cluster` (Ray ships this echovl to every node; every node is checked before training).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

import ray
from verl.single_controller.ray import RayWorkerGroup
from verl.trainer.data_loader import create_dataloader
from verl.trainer.ray_trainer import ResourcePoolManager, Role
from verl.utils.tokenizer import get_processor, get_tokenizer
from verl.workers.reward import AutoRewardManager

from .cluster import NodeCheckError, check_nodes, ray_runtime_env
from .config import ConfigError, EchoPPOConfig, load_config
from .trainer import EchoTrainer
from .worker import EchoWorker

__all__ = ["Runner", "main"]


@ray.remote(num_cpus=1)
class Runner:
    """Builds everything EasyR1's runner builds, with ``EchoWorker`` and ``EchoTrainer``."""

    def run(self, config: EchoPPOConfig) -> None:
        print(json.dumps(config.to_dict(), indent=2))
        model = config.worker.actor.model
        tokenizer = get_tokenizer(
            model.model_path,
            override_chat_template=config.data.override_chat_template,
            trust_remote_code=model.trust_remote_code,
            use_fast=True,
        )
        processor = get_processor(
            model.model_path,
            override_chat_template=config.data.override_chat_template,
            trust_remote_code=model.trust_remote_code,
            use_fast=True,
        )
        worker = ray.remote(EchoWorker)
        role_worker_mapping = {Role.ActorRolloutRef: worker, Role.Critic: worker}
        pool = "global_pool"
        resource_pool_manager = ResourcePoolManager(
            resource_pool_spec={pool: [config.trainer.n_gpus_per_node] * config.trainer.nnodes},
            mapping={Role.ActorRolloutRef: pool, Role.Critic: pool},
        )
        RemoteRewardManager = ray.remote(AutoRewardManager).options(num_cpus=config.worker.reward.num_cpus)
        reward_fn = RemoteRewardManager.remote(config.worker.reward, tokenizer)
        val_reward_fn = RemoteRewardManager.remote(config.worker.reward, tokenizer)
        train_dataloader, val_dataloader = create_dataloader(config.data, tokenizer, processor)
        trainer = EchoTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            train_dataloader=train_dataloader,
            val_dataloader=val_dataloader,
            role_worker_mapping=role_worker_mapping,
            resource_pool_manager=resource_pool_manager,
            ray_worker_group_cls=RayWorkerGroup,
            reward_fn=reward_fn,
            val_reward_fn=val_reward_fn,
        )
        trainer.init_workers()
        trainer.fit()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the config (errors exit with status 2 and one clear line), start Ray, train."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args, check_files=True)
    except ConfigError as error:
        print(f"echovl.train: {error}", file=sys.stderr)
        raise SystemExit(2) from None

    if not ray.is_initialized():
        ray.init(runtime_env=ray_runtime_env())
    try:
        check_nodes(config)
    except NodeCheckError as error:
        print(f"echovl.train: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    runner = Runner.remote()
    ray.get(runner.run.remote(config))
    if config.trainer.ray_timeline is not None:  # export RAY_PROFILING=1 to record it
        ray.timeline(filename=config.trainer.ray_timeline)
