"""Benchmark EchoActor against EasyR1's DataParallelPPOActor (run by hand, not collected by pytest).

    python tests/bench/easyr1_actor.py                                   # CPU, tiny Qwen2.5-VL
    python tests/bench/easyr1_actor.py --model-size wide                 # CPU, tiny layers + Qwen's 152k vocab
    python tests/bench/easyr1_actor.py --device cuda --model-size 3b     # GPU, Qwen2.5-VL-3B dimensions

1. ``update_policy`` with the echo term vs EasyR1's (same model, batch and micro-batching; one clip per group,
   the first half of a verified rollout). Target: time ratio <= 1.02.
2. ``compute_log_prob_and_entropy`` vs EasyR1's ``compute_log_prob`` (one forward either way). Targets: time
   <= 1.10x, peak memory <= 1.05x. GPU: ``torch.cuda.max_memory_allocated``; CPU: peak RSS (``ru_maxrss``) of
   a fresh subprocess per method, also given as the extra over the RSS before the call.
3. ``--only guided``: ``update_policy`` with LUFFY, LUFFY + echo, UFT and UFT + echo against EasyR1's GRPO update
   on the same batch (prompts carrying a ``--hint``-token hint, the first row of each group an expert row, the
   first half of the second row an EchoClip). Targets: time <= 1.05x, peak memory <= 1.02x (CPU: peak RSS of a
   fresh subprocess per method, high-water mark reset before the measured update; GPU: ``max_memory_allocated``).
   On a shared machine add ``--cpu-time`` (the process's CPU time, with ``--threads 1``).

Models have random weights, built from a config (no download): ``tiny``/``wide`` from
:func:`echovl.testing.build_tiny_qwen2_5_vl`, ``3b`` with Qwen2.5-VL-3B-Instruct's dimensions (36 layers,
hidden 2048, 152k vocabulary, 32-layer vision tower) in bf16. Batches: one image per prompt, ``--rollouts``
responses per prompt, laid out like EasyR1's vLLM rollout, mrope position ids from EasyR1's ``get_rope_index``.
EasyR1's padded path (``padding_free=False``) is timed: the padding-free path needs flash-attn (``--padding-free``
runs it on CPU with the tests' pure-torch unpad/pad in place of flash-attn's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.easyr1_stubs import clip_tensors, init_gloo_group, install_vllm_stub, vllm_layout  # noqa: E402

install_vllm_stub()

from verl.protocol import DataProto  # noqa: E402
from verl.utils import torch_functional as VF  # noqa: E402
from verl.workers.actor.config import ActorConfig  # noqa: E402
from verl.workers.actor.dp_actor import DataParallelPPOActor  # noqa: E402

from echovl.config import EchoConfig, GuidanceConfig  # noqa: E402
from echovl.easyr1.actor import ECHO_COEF, EchoActor  # noqa: E402
from echovl.easyr1.luffy import EXPERT_ROW  # noqa: E402
from echovl.easyr1.uft import HINT_LENGTH  # noqa: E402
from echovl.testing import QWEN_SPECIAL_TOKENS, build_tiny_qwen2_5_vl, synthetic_corpus, tiny_image  # noqa: E402
from echovl.uft import append_hints  # noqa: E402

QWEN_VOCAB = 151936
PRESETS = {  # prompts, rollouts, response tokens, image side, micro-batches (experience, update)
    "tiny": dict(prompts=4, rollouts=2, response=192, image=84, micro_exp=2, micro_update=2),
    "wide": dict(prompts=4, rollouts=2, response=192, image=84, micro_exp=2, micro_update=2),
    "3b": dict(prompts=4, rollouts=4, response=1024, image=448, micro_exp=4, micro_update=2),
}


def qwen2_5_vl_3b_config(token_ids: dict[str, int]):
    """Qwen2.5-VL-3B-Instruct's architecture (its config.json), with the tiny tokenizer's special-token ids."""
    from transformers import Qwen2_5_VLConfig

    text = dict(
        vocab_size=QWEN_VOCAB,
        hidden_size=2048,
        intermediate_size=11008,
        num_hidden_layers=36,
        num_attention_heads=16,
        num_key_value_heads=2,
        max_position_embeddings=128000,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_scaling={"type": "mrope", "rope_type": "default", "mrope_section": [16, 24, 24]},
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )
    vision = dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=2048,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        hidden_act="silu",
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=token_ids["<|image_pad|>"],
        video_token_id=token_ids["<|video_pad|>"],
        vision_start_token_id=token_ids["<|vision_start|>"],
        vision_end_token_id=token_ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )


def load_model(size: str, device: str, folder: Path):
    """(model, tokenizer, processor): the tiny tokenizer/processor with a model of the requested size."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    path = build_tiny_qwen2_5_vl(folder / "tiny")
    tokenizer, processor = AutoTokenizer.from_pretrained(path), AutoProcessor.from_pretrained(path)
    torch.manual_seed(0)
    if size == "tiny":
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    else:
        from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

        if size == "wide":
            config = AutoConfig.from_pretrained(path)
            config.text_config.vocab_size = config.vocab_size = QWEN_VOCAB
        else:
            config = qwen2_5_vl_3b_config({t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS})
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        config._attn_implementation = "sdpa"
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config).to(dtype)
    return model.to(device), tokenizer, processor


def response_texts(count: int, tokens: int, tokenizer) -> list[list[int]]:
    """Reasoning-shaped responses (newline-separated steps) of about ``tokens`` tokens."""
    corpus = synthetic_corpus(num_docs=200, seed=1)
    out = []
    for k in range(count):
        ids: list[int] = []
        doc = k
        while len(ids) < tokens * (0.5 + 0.5 * ((k * 7) % 5) / 4):  # lengths vary, as rollouts do
            ids += tokenizer(corpus[doc % len(corpus)], add_special_tokens=False)["input_ids"]
            doc += 11
        out.append(ids)
    return out


def make_batch(
    tokenizer, processor, *, prompts: int, rollouts: int, response: int, image: int, hint: int = 0
) -> DataProto:
    """A rollout batch laid out like EasyR1's: left-padded prompts with one image each, mrope (4, S) positions;
    with ``hint``, each prompt ends with a ``hint``-token UFT hint (``hint_length``)."""
    from verl.models.transformers.qwen2_vl import get_rope_index

    rows, inputs = [], []
    for p in range(prompts):
        picture = tiny_image(p, size=(image, image))
        messages = [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": f"Find x in figure {p}."}]}
        ]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        encoded = processor(images=[picture], text=[text], add_special_tokens=False, return_tensors="pt")
        ids, mask = encoded["input_ids"][0], encoded["attention_mask"][0]
        vision = get_rope_index(
            processor, input_ids=ids, image_grid_thw=encoded["image_grid_thw"], attention_mask=mask
        )
        rows.append((ids, mask, torch.cat([torch.arange(len(ids)).unsqueeze(0), vision], dim=0)))
        inputs.append({"pixel_values": encoded["pixel_values"], "image_grid_thw": encoded["image_grid_thw"]})
    length = max(len(ids) for ids, _, _ in rows)
    padded = [
        VF.postprocess_data(ids, mask, pos, max_length=length, pad_token_id=tokenizer.pad_token_id, left_pad=True)
        for ids, mask, pos in rows
    ]
    input_ids, attention_mask, position_ids = (torch.stack([p[i] for p in padded]) for i in range(3))
    hint_ids = [response_texts(1, hint, tokenizer)[0][:hint] for _ in range(prompts)] if hint else [[]] * prompts
    input_ids, attention_mask, position_ids, hint_length = append_hints(
        input_ids,
        attention_mask,
        position_ids,
        hint_ids,
        max_length=length + hint,
        pad_token_id=tokenizer.pad_token_id,
    )
    input_ids, attention_mask, position_ids = (
        t.repeat_interleave(rollouts, dim=0) for t in (input_ids, attention_mask, position_ids)
    )
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    tensors = vllm_layout(
        input_ids,
        attention_mask,
        position_ids,
        response_texts(prompts * rollouts, response, tokenizer),
        eos=eos,
        pad=tokenizer.pad_token_id,
        length=response,
    )
    non_tensors = {
        "multi_modal_inputs": np.array([inputs[i // rollouts] for i in range(prompts * rollouts)], dtype=object),
        "uid": np.repeat(np.arange(prompts), rollouts).astype(object),
    }
    tensors[HINT_LENGTH] = hint_length.repeat_interleave(rollouts)
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info={"temperature": 0.6})


PADDING_FREE = False
"""``--padding-free``: EasyR1's padding-free path (set in ``main``)."""


def actor_config(rows: int, preset: dict, compile_log_probs: bool) -> ActorConfig:
    config = ActorConfig(
        padding_free=PADDING_FREE,
        dynamic_batching=False,
        use_torch_compile=compile_log_probs,
        micro_batch_size_per_device_for_experience=preset["micro_exp"],
        micro_batch_size_per_device_for_update=preset["micro_update"],
    )
    config.global_batch_size_per_device = rows  # one mini-batch: one optimizer step per update_policy call
    return config


def quiet(*actors):
    """EasyR1 draws progress bars on rank 0 only; they would drown the figures."""
    for actor in actors:
        actor.rank = 1
    return actors


def share_compiled(vanilla, echo) -> None:
    """Both actors use the one compiled log-prob function: two ``torch.compile`` wrappers of the same function in
    one process compete for dynamo's cache (different backends) and would time recompilations, not the actors."""
    echo._log_probs_only = vanilla.log_probs_from_logits


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


CLOCK = time.perf_counter
"""What ``timed`` reads: wall clock, or with ``--cpu-time`` the process's CPU time (on a machine shared with other
jobs, one thread's CPU time does not count the time the scheduler gives to others)."""


def timed(fn, device: str) -> float:
    sync(device)
    start = CLOCK()
    fn()
    sync(device)
    return CLOCK() - start


def interleaved(first, second, device: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of each call of two callables, measured alternately (the order swapping every round) after one
    warm-up each."""
    first(), second()
    a, b = [], []
    for round_ in range(repeats):
        if round_ % 2:
            b.append(timed(second, device))
            a.append(timed(first, device))
        else:
            a.append(timed(first, device))
            b.append(timed(second, device))
    return a, b


def summary(name: str, base: list[float], echo: list[float]) -> dict:
    """Medians, minima and the ratio of the medians."""
    med_a, med_b = statistics.median(base), statistics.median(echo)
    return {
        f"{name}_s": med_a,
        f"{name}_echo_s": med_b,
        f"{name}_min_s": min(base),
        f"{name}_echo_min_s": min(echo),
        "time_ratio": med_b / med_a,
        "time_ratio_of_minima": min(echo) / min(base),
        "times": [round(t, 4) for t in base],
        "times_echo": [round(t, 4) for t in echo],
    }


def setup(args, folder: Path):
    preset = dict(PRESETS[args.model_size])
    if args.response:
        preset["response"] = args.response
    model, tokenizer, processor = load_model(args.model_size, args.device, folder)
    sizes = {k: preset[k] for k in ("prompts", "rollouts", "response", "image")}
    batch = make_batch(tokenizer, processor, **sizes, hint=args.hint if args.only == "guided" else 0)
    batch = batch.to(args.device)
    if args.device == "cuda":  # as EasyR1's worker would, keep the images next to the model
        for inputs in batch.non_tensor_batch["multi_modal_inputs"]:
            for key in inputs:
                inputs[key] = inputs[key].to(args.device)
    if args.model_size == "3b":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model, batch, preset


def bench_log_probs(args, folder: Path) -> dict:
    model, batch, preset = setup(args, folder)
    config = actor_config(len(batch), preset, args.compile)
    vanilla, echo = quiet(
        DataParallelPPOActor(config, model),
        EchoActor(config, model, echo=EchoConfig(entropy_chunk_size=args.chunk_size)),
    )
    share_compiled(vanilla, echo)
    times = interleaved(
        lambda: vanilla.compute_log_prob(batch),
        lambda: echo.compute_log_prob_and_entropy(batch),
        args.device,
        args.repeats,
    )
    out = summary("logprob", *times)
    if args.device == "cuda":
        peaks = []
        for fn in (lambda: vanilla.compute_log_prob(batch), lambda: echo.compute_log_prob_and_entropy(batch)):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            fn()
            sync(args.device)
            peaks.append((torch.cuda.max_memory_allocated(), before))
        (base_peak, before), (echo_peak, _) = peaks
        out.update(
            peak_gb=base_peak / 2**30,
            peak_entropy_gb=echo_peak / 2**30,
            memory_ratio=echo_peak / base_peak,
            extra_over_baseline_mb=(echo_peak - base_peak) / 2**20,
            baseline_activation_gb=(base_peak - before) / 2**30,
        )
    tokens = int(batch.batch["attention_mask"].sum())
    out.update(rows=len(batch), tokens=tokens, seq_len=int(batch.batch["input_ids"].shape[1]))
    return out


def measure_rss(args, method: str, folder: Path) -> dict:
    """Child process: peak RSS of one method (``ru_maxrss`` is a high-water mark, so one method per process)."""
    model, batch, preset = setup(args, folder)
    config = actor_config(len(batch), preset, args.compile)
    actor = EchoActor(config, model, echo=EchoConfig(entropy_chunk_size=args.chunk_size))
    run = (
        actor.compute_log_prob_and_entropy
        if method == "entropy"
        else DataParallelPPOActor(config, model).compute_log_prob
    )
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    run(batch)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"peak_mb": peak / 2**20, "before_mb": before / 2**20}


def bench_update(args, folder: Path) -> dict:
    model, batch, preset = setup(args, folder)
    config = actor_config(len(batch), preset, args.compile)
    batch.batch["old_log_probs"] = quiet(DataParallelPPOActor(config, model))[0].compute_log_prob(batch)
    g = torch.Generator().manual_seed(0)
    response_mask = batch.batch["response_mask"]
    advantages = torch.randn(len(batch), 1, generator=g).to(response_mask.device)
    batch.batch["advantages"] = advantages * response_mask
    echo_mask = torch.zeros_like(response_mask, dtype=torch.bool)
    for row in range(0, len(batch), preset["rollouts"]):  # one clip per group: the first half of a rollout
        echo_mask[row, : int(response_mask[row].sum()) // 2] = True
    batch.batch.update(clip_tensors(echo_mask))
    batch.meta_info[ECHO_COEF] = 0.001
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-7)
    vanilla, echo = quiet(
        DataParallelPPOActor(config, model, optimizer),
        EchoActor(config, model, optimizer, echo=EchoConfig(coef=0.001)),
    )
    share_compiled(vanilla, echo)
    times = interleaved(
        lambda: vanilla.update_policy(batch), lambda: echo.update_policy(batch), args.device, args.repeats
    )
    result = summary("update", *times)
    if args.device == "cuda":
        base_gpu = gpu_kernel_seconds(lambda: vanilla.update_policy(batch))
        echo_gpu = gpu_kernel_seconds(lambda: echo.update_policy(batch))
        result.update(gpu_kernel_s=base_gpu, gpu_kernel_echo_s=echo_gpu, gpu_kernel_ratio=echo_gpu / base_gpu)
    return result


GUIDED = {
    "luffy": (GuidanceConfig(method="luffy"), False),
    "luffy_echo": (GuidanceConfig(method="luffy"), True),
    "uft": (GuidanceConfig(method="uft"), False),
    "uft_echo": (GuidanceConfig(method="uft"), True),
}
"""The guided updates benchmarked against EasyR1's GRPO update: (guidance, echo on)."""


def guided_batch(args, folder: Path):
    """Model, optimizer and a batch every method can train on: old log-probs, advantages, one expert row and one
    EchoClip per group, the prompts' hints (``--hint`` tokens)."""
    model, batch, preset = setup(args, folder)
    config = actor_config(len(batch), preset, args.compile)
    batch.batch["old_log_probs"] = quiet(DataParallelPPOActor(config, model))[0].compute_log_prob(batch)
    g = torch.Generator().manual_seed(0)
    response_mask = batch.batch["response_mask"]
    batch.batch["advantages"] = torch.randn(len(batch), 1, generator=g).to(response_mask.device) * response_mask
    rows = torch.arange(len(batch), device=response_mask.device) % preset["rollouts"]
    batch.batch[EXPERT_ROW] = rows == 0
    echo_mask = torch.zeros_like(response_mask, dtype=torch.bool)
    for row in range(1, len(batch), preset["rollouts"]):
        echo_mask[row, : int(response_mask[row].sum()) // 2] = True
    batch.batch.update(clip_tensors(echo_mask))
    batch.meta_info[ECHO_COEF] = 0.001
    return model, batch, config, torch.optim.AdamW(model.parameters(), lr=1e-7)


def guided_actor(method: str, config, model, optimizer):
    if method == "grpo":
        return quiet(DataParallelPPOActor(config, model, optimizer))[0]
    guidance, echo = GUIDED[method]
    actor = EchoActor(config, model, optimizer, echo=EchoConfig(coef=0.001, enable=echo), guidance=guidance)
    return quiet(actor)[0]


def bench_guided(args, folder: Path) -> dict:
    model, batch, config, optimizer = guided_batch(args, folder)
    grpo = guided_actor("grpo", config, model, optimizer)
    if args.compile:
        for actor in (guided_actor(m, config, model, optimizer) for m in GUIDED):
            share_compiled(grpo, actor)
    out = {
        "rows": len(batch),
        "hint_tokens": int(batch.batch[HINT_LENGTH].sum()),
        "response_tokens": int(batch.batch["response_mask"].sum()),
    }
    for method in GUIDED:
        actor = guided_actor(method, config, model, optimizer)
        if args.compile:
            share_compiled(grpo, actor)
        result = summary(
            "update",
            *interleaved(
                lambda: grpo.update_policy(batch), lambda a=actor: a.update_policy(batch), args.device, args.repeats
            ),
        )
        out[method] = {
            "time_ratio": result["time_ratio"],
            "time_ratio_of_minima": result["time_ratio_of_minima"],
            "update_s": result["update_s"],
            "update_method_s": result["update_echo_s"],
        }
    if args.device == "cuda":
        peaks = {}
        for method in ("grpo", *GUIDED):
            actor = guided_actor(method, config, model, optimizer)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            actor.update_policy(batch)
            sync(args.device)
            peaks[method] = torch.cuda.max_memory_allocated()
        for method in GUIDED:
            out[method]["memory_ratio"] = peaks[method] / peaks["grpo"]
    return out


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def measure_update_rss(args, method: str, folder: Path) -> dict:
    """Child process: peak RSS of one ``update_policy`` call of ``method``. A warm-up call of the same method
    allocates AdamW's state; then the kernel's high-water mark is reset (``/proc/self/clear_refs``), so the peak is
    the update's, not the model building's before it."""
    model, batch, config, optimizer = guided_batch(args, folder)
    actor = guided_actor(method, config, model, optimizer)
    actor.update_policy(batch)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = _status_mb("VmRSS")
    actor.update_policy(batch)
    return {"peak_mb": _status_mb("VmHWM"), "before_mb": before}


def gpu_kernel_seconds(fn) -> float:
    """Total time of the GPU kernels one call launches (torch.profiler): the device work itself, free of the
    host-side jitter (allocator, Python) that dominates wall-clock spread on a shared machine."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(event.self_device_time_total for event in prof.key_averages()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model-size", default="tiny", choices=list(PRESETS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--response", type=int, default=0, help="response tokens (default: the preset's)")
    parser.add_argument("--chunk-size", type=int, default=EchoConfig().entropy_chunk_size)
    parser.add_argument("--compile", action="store_true", help="torch.compile EasyR1's log-prob function")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--only", choices=["update", "logprob", "guided"], default=None)
    parser.add_argument("--cpu-time", action="store_true", help="time with the process's CPU time (CPU, --threads 1)")
    parser.add_argument("--padding-free", action="store_true", help="EasyR1's padding-free path (pure-torch unpad)")
    parser.add_argument("--hint", type=int, default=48, help="UFT hint tokens per prompt (--only guided)")
    parser.add_argument("--_rss", choices=["baseline", "entropy"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_rss_update", choices=["grpo", *GUIDED], default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu_time:
        global CLOCK
        if args.device != "cpu":
            parser.error("--cpu-time measures CPU runs only")
        CLOCK = time.process_time
    if args.padding_free:
        global PADDING_FREE
        from verl.workers.actor import dp_actor

        from tests.test_easyr1_actor import _pad_input, _unpad_input

        PADDING_FREE = True
        dp_actor.unpad_input, dp_actor.pad_input = _unpad_input, _pad_input
        dp_actor.index_first_axis = lambda x, indices: x[indices]
    if args.threads:
        torch.set_num_threads(args.threads)
    init_gloo_group()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if args._rss:
            print(json.dumps(measure_rss(args, args._rss, folder)))
            return
        if args._rss_update:
            print(json.dumps(measure_update_rss(args, args._rss_update, folder)))
            return
        print(
            f"device={args.device} model={args.model_size} chunk={args.chunk_size} compile={args.compile} "
            f"padding_free={args.padding_free} clock={'process CPU time' if args.cpu_time else 'wall'}"
        )
        if args.only in (None, "logprob"):
            result = bench_log_probs(args, folder)
            if args.device == "cpu":
                rss = {}
                for method in ("baseline", "entropy"):
                    cmd = [sys.executable, __file__, f"--_rss={method}", f"--model-size={args.model_size}"]
                    cmd += [f"--chunk-size={args.chunk_size}", f"--threads={args.threads}"]
                    cmd += [f"--response={args.response}"] if args.response else []
                    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
                    rss[method] = json.loads(line[-1])
                result.update(
                    peak_rss_mb=rss["baseline"]["peak_mb"],
                    peak_rss_entropy_mb=rss["entropy"]["peak_mb"],
                    memory_ratio=rss["entropy"]["peak_mb"] / rss["baseline"]["peak_mb"],
                    extra_baseline_mb=rss["baseline"]["peak_mb"] - rss["baseline"]["before_mb"],
                    extra_entropy_mb=rss["entropy"]["peak_mb"] - rss["entropy"]["before_mb"],
                )
            print("compute_log_prob_and_entropy vs compute_log_prob:", json.dumps(result, indent=1))
            print(
                f"  time ratio {result['time_ratio']:.3f} (target <= 1.10), "
                f"peak memory ratio {result['memory_ratio']:.3f} (target <= 1.05)"
            )
        if args.only in (None, "update"):
            result = bench_update(args, folder)
            print("update_policy with echo vs without:", json.dumps(result, indent=1))
            print(f"  time ratio {result['time_ratio']:.3f} (target <= 1.02)")
            if "gpu_kernel_ratio" in result:
                print(
                    f"  GPU kernel time {result['gpu_kernel_s']:.3f} s vs {result['gpu_kernel_echo_s']:.3f} s with echo: "
                    f"ratio {result['gpu_kernel_ratio']:.4f}"
                )
        if args.only == "guided":
            result = bench_guided(args, folder)
            if args.device == "cpu":
                rss = {}
                for method in ("grpo", *GUIDED):
                    cmd = [sys.executable, __file__, f"--_rss_update={method}", f"--model-size={args.model_size}"]
                    cmd += [f"--threads={args.threads}", "--only=guided", f"--hint={args.hint}"]
                    cmd += ["--padding-free"] if args.padding_free else []
                    cmd += [f"--response={args.response}"] if args.response else []
                    line = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
                    rss[method] = json.loads(line[-1])
                grpo_extra = rss["grpo"]["peak_mb"] - rss["grpo"]["before_mb"]
                for method in GUIDED:
                    result[method]["memory_ratio"] = rss[method]["peak_mb"] / rss["grpo"]["peak_mb"]
                    result[method]["peak_rss_mb"] = rss[method]["peak_mb"]
                    extra = rss[method]["peak_mb"] - rss[method]["before_mb"]
                    result[method]["extra_rss_mb"] = extra  # the update's own working memory
                    result[method]["extra_ratio"] = extra / grpo_extra
                result["grpo_peak_rss_mb"] = rss["grpo"]["peak_mb"]
                result["grpo_extra_rss_mb"] = rss["grpo"]["peak_mb"] - rss["grpo"]["before_mb"]
            print("update_policy with LUFFY / UFT (+ echo) vs EasyR1's GRPO:", json.dumps(result, indent=1))
            for method in GUIDED:
                own = result[method].get("extra_ratio")
                print(
                    f"  {method:10s} time ratio {result[method]['time_ratio']:.3f} (target <= 1.05; of the minima "
                    f"{result[method]['time_ratio_of_minima']:.3f}), peak memory ratio "
                    f"{result[method]['memory_ratio']:.3f} (target <= 1.02)"
                    + (f"; the update's own memory {own:.2f}x" if own is not None else "")
                )


if __name__ == "__main__":
    main()
