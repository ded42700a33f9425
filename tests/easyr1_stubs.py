"""Test scaffolding for the EasyR1 integration: a ``vllm`` import stub, a gloo process group, and rollout batches
built the way EasyR1 builds them (its own ``RLHFDataset`` + ``collate_fn`` for the prompts, vLLM's output layout
for the responses), from the tiny offline models of :mod:`echovl.testing`.

EasyR1's worker, trainer and config modules import ``vllm`` at module level; vLLM is a GPU-only dependency, so
tests install a stub that provides just the names imported at the pinned commit (nothing else is stubbed).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

VLLM_STUB_MODULES = {
    "vllm": ("LLM", "RequestOutput", "SamplingParams"),
    "vllm.lora": (),
    "vllm.lora.models": ("LoRAModel",),
    "vllm.lora.request": ("LoRARequest",),
    "vllm.lora.utils": ("get_adapter_absolute_path",),
    "vllm.lora.worker_manager": ("LRUCacheWorkerLoRAManager",),
    "vllm.distributed": (),
    "vllm.distributed.parallel_state": (),
}
"""Every module and name that ``verl`` imports from vllm at module level (pinned commit b44b311b)."""


class _Placeholder:
    """Stands for a vLLM class or function; fails loudly if a test ever uses it."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("vllm is stubbed in the tests: this code path needs a real vLLM (GPU)")


def install_vllm_stub() -> None:
    """Put the stub into ``sys.modules`` unless a real vllm is importable.

    EasyR1's modules keep the names they import, so the stub is only needed while they are being imported: the
    test modules install it at import time and ``tests/conftest.py`` takes it out again once collection is over
    (other libraries, TRL for one, probe ``importlib.util.find_spec("vllm")``, which a stub module breaks).
    """
    if "vllm" in sys.modules or importlib.util.find_spec("vllm") is not None:
        return
    for name, attrs in VLLM_STUB_MODULES.items():
        module = types.ModuleType(name)
        module.__path__ = []  # a package, so submodules resolve
        for attr in attrs:
            if attr[0].isupper():
                setattr(module, attr, type(attr, (_Placeholder,), {}))
            else:
                setattr(module, attr, _Placeholder)
        module.__echovl_stub__ = True
        sys.modules[name] = module


def uninstall_vllm_stub() -> None:
    """Take the stub (and nothing else) out of ``sys.modules``."""
    for name in VLLM_STUB_MODULES:
        if getattr(sys.modules.get(name), "__echovl_stub__", False):
            del sys.modules[name]


def write_vllm_stub(folder: Path) -> Path:
    """Write the same stub as a package under ``folder`` (for subprocesses: put ``folder`` on PYTHONPATH)."""
    folder = Path(folder)
    for name, attrs in VLLM_STUB_MODULES.items():
        package = folder.joinpath(*name.split("."))
        package.mkdir(parents=True, exist_ok=True)
        lines = ['"""vllm import stub for tests."""\n\n', "class _Placeholder:\n    pass\n\n"]
        for attr in attrs:
            if attr[0].isupper():
                lines.append(f"class {attr}(_Placeholder):\n    pass\n\n")
            else:
                lines.append(f"def {attr}(*args, **kwargs):\n    raise RuntimeError('vllm is stubbed')\n\n")
        (package / "__init__.py").write_text("".join(lines))
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_gloo_group() -> None:
    """A single-process gloo group (``update_policy`` all-reduces counts); RANK/WORLD_SIZE as the actor reads them."""
    import torch.distributed as dist

    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(_free_port())
        dist.init_process_group("gloo", rank=0, world_size=1)


_PATCHED_MODEL_CLASSES = {
    "transformers.models.qwen2_vl.modeling_qwen2_vl": ("Qwen2VLModel", "Qwen2VLForConditionalGeneration"),
    "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl": ("Qwen2_5_VLModel", "Qwen2_5_VLForConditionalGeneration"),
    "transformers.models.qwen3_vl.modeling_qwen3_vl": ("Qwen3VLModel", "Qwen3VLForConditionalGeneration"),
    "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe": (
        "Qwen3VLMoeModel",
        "Qwen3VLMoeForConditionalGeneration",
    ),
}
"""The classes whose ``forward`` EasyR1's ``apply_ulysses_patch`` replaces (pinned commit b44b311b)."""


@contextlib.contextmanager
def worker_model_patch(model, config):
    """What ``FSDPWorker`` does to the model classes before building the actor: with ``padding_free`` it calls
    EasyR1's ``apply_ulysses_patch(model_type)``, which swaps in EasyR1's own forward for the Qwen-VL families (a
    zero-weighted pass through the vision tower for text-only micro-batches, the (4, B, L) position ids check) and
    its flash-attention entry. Undone on exit, so the reference forward and other tests see plain transformers."""
    if not config.padding_free:
        yield
        return
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from verl.models.monkey_patch import apply_ulysses_patch

    with pytest.MonkeyPatch.context() as patches:
        for module_name, names in _PATCHED_MODEL_CLASSES.items():
            module = importlib.import_module(module_name)
            for name in names:
                cls = getattr(module, name)
                patches.setattr(cls, "forward", cls.forward)  # recorded, restored on exit
        patches.setitem(ALL_ATTENTION_FUNCTIONS, "flash_attention_2", ALL_ATTENTION_FUNCTIONS["flash_attention_2"])
        apply_ulysses_patch(model.config.model_type)
        yield


# ------------------------------------------------------------------------------------------- batches

RESPONSES = (
    "<think>\nAngle A is 30 degrees.\nSo the side is half.\nTherefore x = 6.\n</think>\n\\boxed{6}",
    "<think>\nThe radius is 3.\nArea is 9 π.\n</think>\nThe answer is \\boxed{9}.",
    "Let x be the side.\nThen x = 4.\n\\boxed{4}",
    "<think>\nSum of angles is 180.\nSo m = 75.\n</think>\n\\boxed{75}",
)


def write_prompt_parquet(path: Path, *, images: bool) -> Path:
    """A tiny Geometry3K-like parquet: ``problem`` (with ``<image>``), ``answer``, ``images`` (PNG bytes;
    the third row is text only: an empty list)."""
    import io

    import pandas as pd

    from echovl.testing import tiny_image

    rows = []
    for i, (problem, answer) in enumerate(
        [("<image>Find x in the triangle.", "6"), ("<image>Find the area of the circle.", "9"), ("Add 1 + 3.", "4")]
    ):
        row = {"problem": problem if images else problem.replace("<image>", ""), "answer": answer}
        if images:
            pictures = []
            if "<image>" in problem:
                buffer = io.BytesIO()
                tiny_image(seed=i, size=(84 - 28 * i, 56)).save(buffer, format="PNG")
                pictures.append({"bytes": buffer.getvalue(), "path": None})
            row["images"] = pictures
        rows.append(row)
    pd.DataFrame(rows).to_parquet(path)
    return path


def vllm_layout(input_ids, attention_mask, position_ids, response_ids, *, eos: int, pad: int, length: int) -> dict:
    """Prompt rows (left-padded, one per response) + response token lists -> the tensors of EasyR1's
    ``vLLMRollout.generate_sequences``: responses end with ``eos`` (cut to ``length``) and are right-padded,
    position ids continue from the last prompt position (all mrope rows alike), ``response_mask`` covers the
    response up to and including the first EOS."""
    from verl.utils import torch_functional as VF

    response_ids = [list(r)[: length - 1] + [eos] for r in response_ids]
    responses = VF.pad_2d_list_to_length(response_ids, pad, max_length=length)
    size = responses.shape[0]
    delta = torch.arange(1, length + 1).view(1, -1).expand(size, -1)
    if position_ids.dim() == 3:  # qwen2vl mrope: (B, 4, S)
        delta = delta.view(size, 1, -1).expand(size, position_ids.size(1), -1)
    response_mask = VF.get_response_mask(response_ids=responses, eos_token_id=eos, dtype=attention_mask.dtype)
    return {
        "prompts": input_ids,
        "responses": responses,
        "input_ids": torch.cat([input_ids, responses], dim=-1),
        "attention_mask": torch.cat([attention_mask, response_mask], dim=-1),
        "response_mask": response_mask,
        "position_ids": torch.cat([position_ids, position_ids[..., -1:] + delta], dim=-1),
    }


def collate_prompts(model_dir: Path, parquet: Path, *, max_prompt_length: int = 96):
    """``(batch_dict, tokenizer, processor)``: every prompt of ``parquet`` through EasyR1's ``RLHFDataset`` (chat
    template, ``<image>`` split, left padding, mrope position ids (4, S) for Qwen2.5-VL) and ``collate_fn``, as
    the training data loader yields them (the processor is None for a text-only model)."""
    from transformers import AutoProcessor, AutoTokenizer
    from verl.utils.dataset import RLHFDataset, collate_fn

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        processor = AutoProcessor.from_pretrained(model_dir)
        if not hasattr(processor, "image_processor"):
            processor = None
    except (OSError, ValueError, TypeError):
        processor = None
    dataset = RLHFDataset(
        str(parquet),
        tokenizer,
        processor,
        prompt_key="problem",
        answer_key="answer",
        max_prompt_length=max_prompt_length,
        filter_overlong_prompts=False,
        min_pixels=28 * 28 * 4,
        max_pixels=28 * 28 * 16,
    )
    return collate_fn([dataset[i] for i in range(len(dataset))]), tokenizer, processor


def build_rollout_batch(
    model_dir: Path,
    parquet: Path,
    *,
    n: int = 2,
    responses=RESPONSES,
    max_prompt_length: int = 96,
    max_response_length: int = 40,
    temperature: float = 1.0,
):
    """A driver-side rollout batch exactly as EasyR1 lays it out after ``generate_sequences``.

    Prompts come from :func:`collate_prompts`; each prompt gets ``n`` responses (cycling ``responses``),
    laid out like ``vLLMRollout.generate_sequences``: right-padded, position ids continued from the last
    prompt position, ``response_mask`` up to and including the first EOS. Also returns the per-sample
    ``multi_modal_inputs`` the worker would add (``FSDPWorker._process_multi_modal_inputs``).
    """
    from verl.protocol import DataProto
    from verl.utils.dataset import process_image

    batch_dict, tokenizer, processor = collate_prompts(model_dir, parquet, max_prompt_length=max_prompt_length)
    prompts = DataProto.from_single_dict(batch_dict)
    num_prompts = len(prompts)
    prompts.non_tensor_batch["uid"] = np.array([f"uid-{i}" for i in range(num_prompts)], dtype=object)

    eos, pad = tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id
    texts = [responses[i % len(responses)] for i in range(num_prompts * n)]
    response_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    batch = prompts.repeat(n, interleave=True)
    tensors = vllm_layout(
        *(batch.batch[k] for k in ("input_ids", "attention_mask", "position_ids")),
        response_ids,
        eos=eos,
        pad=pad,
        length=max_response_length,
    )
    non_tensors = {k: v for k, v in batch.non_tensor_batch.items() if k not in ("raw_prompt_ids",)}
    if processor is not None and "multi_modal_data" in non_tensors:
        inputs = []
        for data in non_tensors["multi_modal_data"]:
            images = [process_image(image, 28 * 28 * 4, 28 * 28 * 16) for image in data.get("images", [])]
            inputs.append(dict(processor.image_processor(images=images, return_tensors="pt")) if images else {})
        non_tensors["multi_modal_inputs"] = np.array(inputs, dtype=object)
    out = DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={"temperature": temperature})
    return out, tokenizer, processor


def reference_log_probs_and_entropy(model, batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain Hugging Face forward, one sample at a time without any padding, temperature-scaled logits.

    Returns log-probs and :func:`echovl.token_entropy` over the response positions ([B, R], zeros where the
    response is padding).
    """
    from echovl.entropy import token_entropy

    data = batch.batch
    size, length = data["responses"].shape
    log_probs = torch.zeros(size, length)
    entropy = torch.zeros(size, length)
    inputs = batch.non_tensor_batch.get("multi_modal_inputs")
    with torch.no_grad():
        for row in range(size):
            valid = data["attention_mask"][row].bool()
            ids = data["input_ids"][row][valid].unsqueeze(0)
            position_ids = data["position_ids"][row]
            if position_ids.dim() == 2:  # (4, S) mrope -> (4, 1, L)
                position_ids = position_ids[:, valid].unsqueeze(1)
            else:
                position_ids = position_ids[valid].unsqueeze(0)
            extra = dict(inputs[row]) if inputs is not None else {}
            logits = model(input_ids=ids, position_ids=position_ids, use_cache=False, **extra).logits[0].float()
            logits = logits / temperature
            num_response = int(data["response_mask"][row].sum())
            # the response starts after the prompt's valid tokens; position t predicts token t + 1
            prompt_len = int(data["attention_mask"][row][:-length].sum())
            scores = logits[prompt_len - 1 : prompt_len - 1 + num_response]
            targets = data["responses"][row][:num_response]
            log_probs[row, :num_response] = torch.log_softmax(scores, -1).gather(-1, targets[:, None])[:, 0]
            entropy[row, :num_response] = token_entropy(scores)
    return log_probs, entropy


def actor_config(batch_rows, *, micro=2, padding_free=False, dynamic_batching=False, **kwargs):
    """EasyR1's ``ActorConfig`` for CPU tests: no torch.compile, ``batch_rows`` rows per mini-batch per device."""
    from verl.workers.actor.config import ActorConfig

    config = ActorConfig(
        padding_free=padding_free,
        dynamic_batching=dynamic_batching,
        use_torch_compile=False,
        micro_batch_size_per_device_for_experience=micro,
        micro_batch_size_per_device_for_update=micro,
        **kwargs,
    )
    config.global_batch_size_per_device = batch_rows
    return config


def clip_tensors(mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The clip tensors of one prefix clip per row over ``mask``'s tokens, laid out as the echo step lays out
    ``max`` selection (written out here, not taken from echovl): token weight ``1 / clip length`` on the clip's
    tokens, row clip weight 1 on rows with a clip."""
    from echovl.echo import ECHO_CLIP_WEIGHT, ECHO_WEIGHT

    mask = mask.bool()
    return {
        ECHO_WEIGHT: mask.float() / mask.sum(-1, keepdim=True).clamp(min=1),
        ECHO_CLIP_WEIGHT: mask.any(-1).float(),
    }


def reference_clip_nll(model, batch, rows, temperature: float, mask_key: str = "echo_weight") -> torch.Tensor:
    """Mean over ``rows`` of each row's mean NLL over the tokens where ``mask_key`` is nonzero (the clip), differentiable:
    a plain Hugging Face forward per row over the row's valid tokens (as its ``attention_mask`` gives them),
    temperature-scaled."""
    data = batch.batch
    length = data["responses"].shape[1]
    inputs = batch.non_tensor_batch.get("multi_modal_inputs")
    per_clip = []
    for row in rows:
        valid = data["attention_mask"][row].bool()
        ids = data["input_ids"][row][valid].unsqueeze(0)
        position_ids = data["position_ids"][row]
        position_ids = position_ids[:, valid].unsqueeze(1) if position_ids.dim() == 2 else position_ids[valid][None]
        extra = dict(inputs[row]) if inputs is not None else {}
        logits = model(input_ids=ids, position_ids=position_ids, use_cache=False, **extra).logits[0].float()
        prompt_len = int(data["attention_mask"][row][:-length].sum())
        positions = data[mask_key][row].nonzero().flatten()  # position t of the response is predicted at t - 1
        log_probs = torch.log_softmax(logits[prompt_len - 1 + positions] / temperature, dim=-1)
        per_clip.append(-log_probs.gather(-1, data["responses"][row][positions, None]).mean())
    return torch.stack(per_clip).mean()


# ------------------------------------------------------------------------------------------- simulated ranks


def run_simulated_ranks(world_size: int, fn, monkeypatch) -> list:
    """Run ``fn(rank)`` for every rank at once, one thread each, with ``torch.distributed.all_reduce`` (SUM and
    MAX) reducing over the threads as a process group of ``world_size`` would; returns the results by rank.

    Every rank must make the same sequence of all-reduce calls (as real collectives require); a rank that fails
    breaks the barrier, so the others stop instead of waiting forever, and the first error is raised.
    """
    import threading

    import torch.distributed as dist

    barrier = threading.Barrier(world_size, timeout=120)
    slots: list = [None] * world_size
    local = threading.local()

    def all_reduce(tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        slots[local.rank] = tensor.detach().clone()
        barrier.wait()
        stacked = torch.stack(slots)
        result = stacked.max(0).values if op == dist.ReduceOp.MAX else stacked.sum(0)
        barrier.wait()  # every rank has read the slots before any writes the next call's value
        tensor.copy_(result)

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    results: list = [None] * world_size
    errors: list = []

    def target(rank: int) -> None:
        local.rank = rank
        try:
            results[rank] = fn(rank)
        except BaseException as error:  # noqa: BLE001 (re-raised below, in the calling thread)
            errors.append(error)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
        raise (real or errors)[0]
    return results
