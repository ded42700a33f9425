"""Benchmark the evaluation (run by hand, not collected by pytest).

    python tests/bench/eval.py                  # generation (transformers) and grading, on the CPU
    python tests/bench/eval.py --vllm           # also vLLM's throughput (needs vLLM and a GPU)

1. Generation, transformers backend: the same prompts (LUFFY's MATH-500 questions under the training prompt when
   ``--luffy`` (default ``../shared/data/luffy/valid.parquet``) is there, else synthetic ones), greedy, on the tiny offline Qwen2, in
   batches of ``--batch-size`` left-padded sequences against one prompt at a time (the baseline, same run). Both
   must give the same texts; the ratio of their times is printed.
2. Grading: ``echovl.reward.judge`` on 1000 responses (a think block of about 1500 characters, then a boxed answer:
   right, wrong or missing; fractions, intervals, roots, degrees, sets, letters), every (answer, reference) pair a
   new one so that no verdict comes from the grader's caches, against the old reward's mathruler-only check on the
   same answers. Printed as seconds per 1000 samples.
3. ``--vllm``: vLLM's throughput in generated tokens per second through ``VLLMBackend``, on a model with
   Qwen2.5-7B's dimensions and random weights (``load_format="dummy"``: nothing is written or downloaded) and the
   tiny tokenizer's vocabulary.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

REPO = Path(__file__).resolve().parents[2]
LUFFY_VALID = REPO.parent / "shared" / "data" / "luffy" / "valid.parquet"
FORMAT_PROMPT = REPO / "configs" / "format_prompt" / "math_think.jinja"


def questions(count: int, source: Path = LUFFY_VALID) -> list[str]:
    if source.exists():
        import pyarrow.parquet as pq

        from echovl.data.openr1_math import question_text

        rows = pq.read_table(source, columns=["prompt", "data_source"]).to_pylist()
        found = [question_text(r["prompt"]) for r in rows if r["data_source"] == "math"]
        if len(found) >= count:
            return found[:count]
    rng = random.Random(0)
    return [
        f"Find the value of x if {rng.randint(2, 99)}x + {rng.randint(1, 99)} = {rng.randint(100, 999)}."
        for _ in range(count)
    ]


def bench_generation(args) -> None:
    import torch

    from echovl.inference import PromptBuilder, Sampling, TransformersBackend, load_model
    from echovl.testing import build_tiny_qwen2

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(build_tiny_qwen2(Path(tmp) / "tiny"), device="cpu")
        batched = TransformersBackend(model, batch_size=args.batch_size)
        single = TransformersBackend(model, batch_size=1)
        builder = PromptBuilder(batched.tokenizer, format_prompt=FORMAT_PROMPT.read_text())
        prompts = [builder.build(q) for q in questions(args.prompts, args.luffy)]
        sampling = Sampling(temperature=0, max_new_tokens=args.max_new_tokens)
        lengths = sorted(len(p.token_ids) for p in prompts)
        print(
            f"generation: {len(prompts)} prompts ({lengths[0]}-{lengths[-1]} tokens), greedy, {args.max_new_tokens} "
            f"new tokens, tiny Qwen2, {args.threads} torch threads"
        )
        batched.generate(prompts[:2], sampling)  # warm-up
        best = {}
        outputs = {}
        for name, backend in (("batched", batched), ("one at a time", single)):
            for _ in range(args.repeats):
                start = time.perf_counter()
                outputs[name] = backend.generate(prompts, sampling)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - start)
        same = outputs["batched"] == outputs["one at a time"]
        print(f"  batched (batch {args.batch_size}): {best['batched']:.2f} s")
        print(f"  one prompt at a time:        {best['one at a time']:.2f} s")
        print(f"  ratio {best['one at a time'] / best['batched']:.1f}x; same outputs: {same}")
        if not same:
            raise SystemExit("batched and one-at-a-time generation differ")


def responses(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    think = " ".join(
        rng.choice(["so", "then", "we", "get", "x", "=", "2", "+", "\\frac{1}{2}", "hence"]) for _ in range(300)
    )
    out = []
    for i in range(count):
        m = i // 12 + 2  # every (answer, reference) pair is new: nothing comes from a cache
        answer, reference = [
            (f"\\frac{{{m}}}{{4}}", str(m / 4)),
            (f"\\frac{{{m}}}{{4}}", f"\\frac{{{m}}}{{3}}"),
            (f"({m}, {m + 1}]", f"({m},{m + 1}]"),
            (f"[{m}, {m + 1})", f"({m},{m + 1}]"),
            (f"{m}\\sqrt{{3}}", f"\\sqrt{{{3 * m * m}}}"),
            (f"{m}^\\circ", str(m)),
            (str(m), f"{m}.0"),
            (str(m), str(m + 1)),
            ("ABCD"[m % 4], "ABCD"[m % 4]),
            ("ABCD"[m % 4], "ABCD"[(m + 1) % 4]),
            (f"x = {m}", str(m)),
            (f"\\{{{m}, {m + 1}\\}}", f"\\{{{m + 1},{m}\\}}"),
        ][i % 12]
        tail = f"\\boxed{{{answer}}}" if i % 10 else "I am not sure."
        out.append((f"<think>\n{think}\n</think>\nThe answer is {tail}", reference))
    return out


def bench_grading(args) -> None:
    from mathruler.grader import extract_boxed_content, grade_answer

    from echovl.reward.math import _parse_boxed, answers_match, judge

    samples = responses(1000)
    times, baseline = [], []
    for _ in range(args.repeats):
        answers_match.cache_clear()
        _parse_boxed.cache_clear()
        start = time.perf_counter()
        verdicts = [judge(r, t).correct for r, t in samples]
        times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for r, t in samples:
            answer = extract_boxed_content(r.rsplit("</think>", 1)[-1])
            answer != "None" and grade_answer(answer, t)
        baseline.append(time.perf_counter() - start)
    print(f"grading: 1000 responses, {sum(verdicts)} correct")
    print(f"  echovl.reward.judge (math-verify + mathruler, caches cleared): {min(times):.2f} s per 1000 samples")
    print(f"  mathruler only (the old training reward):                     {min(baseline):.2f} s per 1000 samples")


def bench_vllm(args) -> None:
    from transformers import Qwen2Config

    from echovl.inference import PromptBuilder, Sampling, VLLMBackend
    from echovl.testing import build_tiny_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "qwen2_5_7b_dims"
        tokenizer = build_tiny_tokenizer(vision_tokens=False)
        tokenizer.save_pretrained(folder)
        Qwen2Config(  # Qwen2.5-7B's dimensions; the vocabulary is the tiny tokenizer's
            vocab_size=len(tokenizer),
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            torch_dtype="bfloat16",
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        ).save_pretrained(folder)
        backend = VLLMBackend(folder, load_format="dummy", gpu_memory_utilization=0.85, show_progress=False)
        builder = PromptBuilder(backend.tokenizer, format_prompt=FORMAT_PROMPT.read_text())
        prompts = [builder.build(q) for q in questions(args.vllm_prompts, args.luffy)]
        sampling = Sampling(n=args.vllm_n, temperature=0.6, max_new_tokens=args.vllm_max_new_tokens)
        backend.generate(prompts[:4], sampling)  # warm-up
        start = time.perf_counter()
        texts = backend.generate(prompts, sampling)
        elapsed = time.perf_counter() - start
        tokens = sum(len(backend.tokenizer.encode(t)) for group in texts for t in group)
        print(
            f"vLLM: {len(prompts)} prompts x {args.vllm_n} samples, up to {args.vllm_max_new_tokens} new tokens, "
            f"Qwen2.5-7B dimensions, random weights: {tokens} tokens in {elapsed:.1f} s = {tokens / elapsed:.0f} tokens/s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--luffy", type=Path, default=LUFFY_VALID, help="LUFFY's valid.parquet (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--skip-generation", action="store_true")
    parser.add_argument("--vllm", action="store_true", help="also measure vLLM's throughput (GPU)")
    parser.add_argument("--vllm-prompts", type=int, default=512)
    parser.add_argument("--vllm-n", type=int, default=8)
    parser.add_argument("--vllm-max-new-tokens", type=int, default=1024)
    args = parser.parse_args()
    if not args.skip_generation:
        bench_generation(args)
    bench_grading(args)
    if args.vllm:
        bench_vllm(args)


if __name__ == "__main__":
    main()
