"""EchoWorker: registered overrides, the Ray colocation pitfall, and old_entropy from compute_log_probs (on CPU, with
the FSDP/CUDA parts of the worker replaced by their single-process equivalents)."""

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import (  # noqa: E402
    build_rollout_batch,
    init_gloo_group,
    install_vllm_stub,
    write_prompt_parquet,
)

install_vllm_stub()

import ray  # noqa: E402
from verl.protocol import DataProto  # noqa: E402
from verl.single_controller.base.decorator import MAGIC_ATTR, Dispatch  # noqa: E402
from verl.single_controller.ray import RayClassWithInitArgs  # noqa: E402
from verl.single_controller.ray.base import create_colocated_worker_cls  # noqa: E402
from verl.workers.fsdp_workers import FSDPWorker  # noqa: E402
from verl.workers.sharding_manager.fsdp_ulysses import FSDPUlyssesShardingManager  # noqa: E402

from echovl.config import EchoConfig  # noqa: E402
from echovl.easyr1.actor import EchoActor  # noqa: E402
from echovl.easyr1.config import load_config  # noqa: E402
from echovl.easyr1.worker import EchoWorker  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _process_group():
    init_gloo_group()


def test_overrides_keep_easyr1_dispatch_modes():
    for name, mode in [("init_model", Dispatch.ONE_TO_ALL), ("compute_log_probs", Dispatch.DP_COMPUTE_PROTO)]:
        ours, theirs = getattr(EchoWorker, name), getattr(FSDPWorker, name)
        assert ours is not theirs and getattr(ours, MAGIC_ATTR) == getattr(theirs, MAGIC_ATTR)
        assert getattr(ours, MAGIC_ATTR)["dispatch_mode"] == mode


def test_ray_colocation_uses_an_argument_free_base():
    """create_colocated_worker_cls subclasses ``__base__`` and calls it without arguments: that must not be
    FSDPWorker, and the registered methods (ours) must be bound for the worker group."""
    remote = ray.remote(EchoWorker)
    base = remote.__ray_actor_class__.__base__
    assert base is not FSDPWorker and FSDPWorker not in base.__mro__
    config = load_config([]).worker
    colocated = create_colocated_worker_cls(
        {
            "actor_rollout_ref": RayClassWithInitArgs(cls=remote, config=config, role="actor_rollout_ref"),
            "critic": RayClassWithInitArgs(cls=remote, config=config, role="critic"),
        }
    )
    worker_dict = colocated.cls.__ray_actor_class__
    assert worker_dict.__base__ is base
    bound = worker_dict.actor_rollout_ref_compute_log_probs
    assert getattr(bound, MAGIC_ATTR)["dispatch_mode"] == Dispatch.DP_COMPUTE_PROTO


@pytest.fixture(scope="module")
def vl_batch(tiny_vl_dir, tmp_path_factory):
    parquet = write_prompt_parquet(tmp_path_factory.mktemp("worker") / "train.parquet", images=True)
    batch, _, processor = build_rollout_batch(tiny_vl_dir, parquet, n=2)
    batch.non_tensor_batch.pop("multi_modal_inputs")  # the worker makes these itself
    batch.meta_info.update(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16, video_fps=2.0)
    return batch, processor


def _worker(model, processor, echo: EchoConfig, monkeypatch):
    """An EchoWorker whose distributed/CUDA state is the single-process equivalent (no FSDP, no device mesh)."""
    monkeypatch.setenv("DISABLE_WORKER_INIT", "1")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: "cpu")
    worker = EchoWorker.__new__(EchoWorker)
    config = load_config(
        [
            "worker.actor.padding_free=false",
            "worker.actor.dynamic_batching=false",
            "worker.actor.use_torch_compile=false",
            "worker.actor.micro_batch_size_per_device_for_experience=2",
            "worker.rollout.temperature=0.8",
        ]
    ).worker
    config.actor.echo = echo
    worker.config, worker.processor, worker._cache = config, processor, {}
    worker._has_actor, worker._use_param_offload, worker._world_size = True, False, 1
    worker.ulysses_sharding_manager = FSDPUlyssesShardingManager(None)
    worker.actor = EchoActor(config.actor, model)
    return worker


def test_compute_log_probs_returns_old_entropy(tiny_vl_dir, vl_batch, monkeypatch):
    from transformers import AutoModelForImageTextToText

    batch, processor = vl_batch
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir, dtype=torch.float32)
    worker = _worker(model, processor, EchoConfig(), monkeypatch)
    output = worker.compute_log_probs(_copy(batch))
    assert set(output.batch.keys()) == {"old_log_probs", "old_entropy"}
    assert output.meta_info == {"temperature": 0.8}  # how update_actor later gets its temperature

    reference = _copy(batch)
    worker._process_multi_modal_inputs(reference)
    reference.meta_info["temperature"] = 0.8
    log_probs, entropy = worker.actor.compute_log_prob_and_entropy(reference)
    assert torch.equal(output.batch["old_log_probs"], log_probs)
    assert torch.equal(output.batch["old_entropy"], entropy) and entropy.dtype == torch.float32

    # echo off: exactly EasyR1's output (no entropy pass)
    worker.actor.echo = EchoConfig(enable=False)
    plain = worker.compute_log_probs(_copy(batch))
    assert set(plain.batch.keys()) == {"old_log_probs"}
    assert torch.equal(plain.batch["old_log_probs"], log_probs)

    # a call with a different number of rows (DAPO + echo's extra pass): EasyR1's uid cache would raise
    worker.actor.echo = EchoConfig()
    smaller = _copy(batch)[:4]
    assert len(worker.compute_log_probs(smaller)) == 4
    with pytest.raises(ValueError):
        FSDPWorker._process_multi_modal_inputs(worker, _copy(batch))


def _copy(batch):
    return DataProto(
        batch=batch.batch.clone(), non_tensor_batch=dict(batch.non_tensor_batch), meta_info=dict(batch.meta_info)
    )


def test_multi_modal_cache_still_reused_for_equal_uids(vl_batch, monkeypatch):
    batch, processor = vl_batch
    worker = _worker(torch.nn.Linear(1, 1), processor, EchoConfig(), monkeypatch)
    first = _copy(batch)
    worker._process_multi_modal_inputs(first)
    second = _copy(batch)
    worker._process_multi_modal_inputs(second)
    assert second.non_tensor_batch["multi_modal_inputs"] is first.non_tensor_batch["multi_modal_inputs"]
    assert isinstance(first.non_tensor_batch["multi_modal_inputs"], np.ndarray)
