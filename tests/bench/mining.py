"""Benchmark the driver-side mining and the entropy memory footprint (run by hand, not collected by pytest).

    python tests/bench/mining.py                # both parts, paper-sized
    python tests/bench/mining.py --skip-memory  # timing only

1. Mining: 1024 rollouts (128 prompts x 8, the paper's rollout batch) of up to 4096 tokens on one CPU thread.
   ``step_index`` + ``mine_echo_clips`` in their plain vectorised form, checked against the plain-Python reference
   loop of the tests on the same inputs in the same run (the vectorised time is the best of ``--repeats`` calls,
   the loop's is one call). Target: mining costs <= 1% of a training step. The step's time is not measurable on a
   CPU; ``--step-seconds`` (default 48) is EasyR1's own published figure scaled to the paper's batch: 120 s per
   step for Qwen2.5-VL-7B on Geometry3K on 8 x H100 with EasyR1's default 512 prompts x 5 rollouts of up to 2048
   tokens (``assets/baselines.md`` at the pinned commit), x 1024 / 2560 rollouts. Longer responses (the 4096 here)
   only lengthen the step. Also prints what filling a fresh tensor the size of ``step_index``'s output costs.
2. Entropy memory: ``token_entropy`` on 8192 x 152064 bf16 logits, chunked (default) vs unchunked (one
   chunk), each in a fresh subprocess; extra peak RSS over the logits themselves. Target: chunked extra
   memory <= 10% of the logits' size.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from echovl.clip import mine_echo_clips  # noqa: E402
from echovl.entropy import DEFAULT_CHUNK_SIZE, token_entropy  # noqa: E402
from echovl.steps import step_index  # noqa: E402
from tests.reference import mine_ref, step_index_ref  # noqa: E402

VOCAB = 152064


def make_batch(prompts: int, rollouts: int, length: int, seed: int = 0):
    """Token ids with a newline token every ~30 tokens, right padding, random entropy and verification."""
    g = torch.Generator().manual_seed(seed)
    batch = prompts * rollouts
    ids = torch.randint(0, VOCAB, (batch, length), generator=g)
    newline_ids = torch.tensor([198, 271, 624, 382])  # a few delimiter tokens
    is_newline = torch.rand(batch, length, generator=g) < 1 / 30
    ids = torch.where(is_newline, newline_ids[torch.randint(0, 4, (batch, length), generator=g)], ids)
    lengths = torch.randint(length // 8, length + 1, (batch,), generator=g)
    mask = torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)
    is_delimiter = torch.zeros(VOCAB, dtype=torch.bool)
    is_delimiter[newline_ids] = True
    entropy = torch.rand(batch, length, generator=g) * 3
    text_mask = mask & (torch.rand(batch, length, generator=g) > 0.02)
    verified = torch.rand(batch, generator=g) < 0.6
    group = torch.arange(prompts).repeat_interleave(rollouts)[torch.randperm(batch, generator=g)]
    return ids, mask, is_delimiter, entropy, text_mask, verified, group


def _best_of(repeats: int, fn, *args):
    """Best time of ``repeats`` calls after a warm-up call, with the garbage collector off (as timeit does: the
    reference loop builds millions of Python objects and a collection in the middle is noise, not its cost)."""
    fn(*args)
    times, result = [], None
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn(*args)
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return min(times), result


def bench_mining(prompts: int, rollouts: int, length: int, repeats: int) -> dict:
    torch.set_num_threads(1)
    ids, mask, is_delimiter, entropy, text_mask, verified, group = make_batch(prompts, rollouts, length)
    t_steps, steps = _best_of(repeats, step_index, ids, mask, is_delimiter)
    t_mine, clips = _best_of(repeats, mine_echo_clips, entropy, steps, text_mask, verified, group)
    # what writing step_index's output alone costs: the OS maps and zeroes fresh pages for every new tensor this big
    t_output, _ = _best_of(repeats, lambda: torch.empty(ids.shape, dtype=torch.long).fill_(-1))

    r_steps, ref_steps = _best_of(1, lambda: step_index_ref(ids.tolist(), mask.long().tolist(), is_delimiter.tolist()))
    r_mine, (expected, _) = _best_of(
        1, lambda: mine_ref(entropy.tolist(), ref_steps, text_mask.tolist(), verified.tolist(), group.tolist())
    )

    assert steps.tolist() == ref_steps, "vectorised and reference steps differ"
    got = dict(zip(clips.group.tolist(), zip(clips.row.tolist(), clips.step.tolist())))
    assert got == {g: v[:2] for g, v in expected.items()}, "vectorised and reference clips differ"
    return {
        "step_index": (t_steps, r_steps),
        "mine_echo_clips": (t_mine, r_mine),
        "total": (t_steps + t_mine, r_steps + r_mine),
        "clips": len(clips),
        "output": t_output,
    }


def _peak_extra_mb(rows: int, chunk_size: int) -> None:
    """Child process: allocate the logits, run token_entropy, print the peak RSS growth."""
    torch.set_num_threads(2)
    logits = torch.randn(rows, VOCAB, dtype=torch.bfloat16)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    token_entropy(logits, chunk_size=chunk_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"extra_mb": (peak - base) / 1024, "logits_mb": logits.numel() * 2 / 2**20}))


def bench_memory(rows: int) -> dict:
    results = {}
    for name, chunk in (("chunked", DEFAULT_CHUNK_SIZE), ("unchunked", rows)):
        code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import mining; mining._peak_extra_mb({rows}, {chunk})"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    logits_mb = results["chunked"]["logits_mb"]
    return {
        "logits_mb": logits_mb,
        "chunked_extra_mb": results["chunked"]["extra_mb"],
        "unchunked_extra_mb": results["unchunked"]["extra_mb"],
        "chunked_extra_over_logits": results["chunked"]["extra_mb"] / logits_mb,
        "unchunked_extra_over_logits": results["unchunked"]["extra_mb"] / logits_mb,
        "chunked_over_unchunked": results["chunked"]["extra_mb"] / results["unchunked"]["extra_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20, help="best of this many timed calls")
    parser.add_argument("--rows", type=int, default=8192, help="logits rows for the memory part")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=48.0,
        help="a training step at the paper's sizes (default: EasyR1's published 120 s x 1024 / 2560 rollouts)",
    )
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    m = bench_mining(args.prompts, args.rollouts, args.length, args.repeats)
    print(f"mining {args.prompts}x{args.rollouts} rollouts x {args.length} tokens, 1 thread, {m['clips']} clips")
    print(f"  {'':16} {'vectorised':>11} {'loop':>9} {'speedup':>8}")
    for name in ("step_index", "mine_echo_clips", "total"):
        fast, slow = m[name]
        print(f"  {name:16} {fast * 1e3:8.1f} ms {slow:7.2f} s {slow / fast:7.0f}x")
    share = m["total"][0] / args.step_seconds
    print(f"  mining / a training step of {args.step_seconds:g} s: {100 * share:.2f}% (target <= 1%)")
    print(f"  (filling a fresh tensor the size of step_index's output alone takes {m['output'] * 1e3:.1f} ms)")
    if not args.skip_memory:
        r = bench_memory(args.rows)
        print(f"token_entropy on {args.rows} x {VOCAB} bf16 logits ({r['logits_mb']:.0f} MB)")
        print(
            f"  chunked (chunk_size={DEFAULT_CHUNK_SIZE}): +{r['chunked_extra_mb']:.0f} MB = "
            f"{100 * r['chunked_extra_over_logits']:.1f}% of the logits (target <= 10%)"
        )
        print(
            f"  unchunked: +{r['unchunked_extra_mb']:.0f} MB = {100 * r['unchunked_extra_over_logits']:.0f}% of the logits"
        )
        print(f"  chunked / unchunked extra memory: {r['chunked_over_unchunked']:.3f}")


if __name__ == "__main__":
    main()
