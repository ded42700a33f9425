"""``python -m echovl.eval --model A [--model B ...] --benchmarks FILES_OR_FOLDERS --out DIR [options]``.

See ``--help`` and docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import sys

from ..inference import InferenceError
from .run import DEFAULT_FORMAT_PROMPT, EvalConfig, evaluate, read_training_config

__all__ = ["add_prompt_arguments", "build_parser", "main", "prompt_settings"]


def _k(value: str) -> tuple[str | None, int]:
    name, _, number = value.rpartition("=")
    try:
        return (name or None), int(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected K or NAME=K with an integer K, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m echovl.eval",
        description=(
            "Evaluate models on benchmark files and print the paper's table: one row per model, one column per "
            "benchmark, the in-distribution (ID) and out-of-distribution (OOD) averages, and each model's "
            "difference to the first with a paired bootstrap interval over problems. Prompts are built as EasyR1 "
            "builds them in training; answers are graded by echovl's training reward. A killed run continues where "
            "it stopped when started again with the same arguments."
        ),
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="[NAME=]PATH",
        help="a Hugging Face model folder, an EasyR1 checkpoint (global_step_N or its actor folder) or a hub name; "
        "repeat for an A/B (the first is the baseline)",
    )
    parser.add_argument(
        "--benchmarks",
        nargs="+",
        action="extend",
        required=True,
        metavar="[NAME=]FILE_OR_FOLDER",
        help="benchmark parquet files or folders (data_prep's outputs: data/openr1_math/benchmarks, "
        "data/geometry3k/test.parquet); a file's data_source values are its benchmarks",
    )
    parser.add_argument("--out", required=True, help="output folder (samples, results.json/csv, table.md, cache)")
    parser.add_argument(
        "--backend", choices=("auto", "vllm", "transformers"), default="auto", help="default: %(default)s"
    )
    parser.add_argument(
        "--k",
        type=_k,
        action="append",
        default=[],
        metavar="[NAME=]K",
        help="samples per problem (avg@K), for all benchmarks or NAME=K for one; default 32 for AIME24, AIME25 "
        "and AMC, 1 for the others",
    )
    parser.add_argument("--temperature", type=float, default=0.6, help="default: %(default)s")
    parser.add_argument("--top-p", type=float, default=1.0, help="default: %(default)s")
    parser.add_argument("--max-new-tokens", type=int, default=8192, help="default: %(default)s")
    parser.add_argument("--greedy", action="store_true", help="greedy decoding, one sample per problem")
    parser.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    parser.add_argument("--limit", type=int, default=None, help="only the first N problems of each benchmark")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="transformers backend: sequences per batch (default: %(default)s)"
    )
    add_prompt_arguments(parser)
    parser.add_argument(
        "--ood",
        nargs="+",
        default=None,
        metavar="NAME",
        help="the out-of-distribution benchmarks (default: arc_c, gpqa, mmlu_pro); the others are ID",
    )
    parser.add_argument("--bootstrap", type=int, default=10000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--confidence", type=float, default=0.95, help="interval level (default: %(default)s)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: when stderr is a terminal)",
    )
    hardware = parser.add_argument_group("hardware")
    hardware.add_argument(
        "--device", default=None, help="transformers backend: cuda or cpu (default: cuda if visible)"
    )
    hardware.add_argument("--tensor-parallel-size", type=int, default=None, help="vLLM: GPUs per model (default: all)")
    hardware.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="vLLM (default: %(default)s)")
    return parser


def add_prompt_arguments(
    parser: argparse.ArgumentParser,
    config_help: str = "the training YAML: its data.format_prompt, min_pixels, max_pixels, prompt_key, answer_key, "
    "image_key",
) -> None:
    """The prompt options (``--config``, ``--format-prompt``, pixels, column keys); read them with
    :func:`prompt_settings`."""
    prompt = parser.add_argument_group("prompt (as in training; a flag beats --config)")
    prompt.add_argument("--config", default=None, help=config_help)
    prompt.add_argument(
        "--format-prompt",
        default=None,
        help="Jinja template applied to each problem, or 'none' (default: "
        f"{DEFAULT_FORMAT_PROMPT.relative_to(DEFAULT_FORMAT_PROMPT.parents[2])})",
    )
    prompt.add_argument("--min-pixels", type=int, default=None, help="default: EasyR1's 262144")
    prompt.add_argument("--max-pixels", type=int, default=None, help="default: EasyR1's 4194304")
    prompt.add_argument("--prompt-key", default=None, help="problem column (default: problem)")
    prompt.add_argument("--answer-key", default=None, help="answer column (default: answer)")
    prompt.add_argument("--image-key", default=None, help="image column (default: images)")


def prompt_settings(args: argparse.Namespace) -> dict:
    """The prompt fields from ``--config`` and the prompt flags (a flag beats the config; ``none``: no format
    prompt)."""
    prompt = read_training_config(args.config) if args.config else {}
    for key in ("format_prompt", "min_pixels", "max_pixels", "prompt_key", "answer_key", "image_key"):
        value = getattr(args, key)
        if value is not None:
            prompt[key] = value
    if str(prompt.get("format_prompt", "")).lower() == "none":
        prompt["format_prompt"] = None
    return prompt


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    prompt = prompt_settings(args)
    k_all = [k for name, k in args.k if name is None]
    return EvalConfig(
        models=args.model,
        benchmarks=args.benchmarks,
        out=args.out,
        backend=args.backend,
        k=k_all[-1] if k_all else None,
        k_per_benchmark={name: k for name, k in args.k if name is not None},
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        seed=args.seed,
        limit=args.limit,
        batch_size=args.batch_size,
        ood=args.ood,
        bootstrap=args.bootstrap,
        confidence=args.confidence,
        show_progress=args.progress,
        device=args.device,
        tensor_parallel_size=args.tensor_parallel_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        **prompt,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        evaluate(config_from_args(args))
    except InferenceError as exc:  # EvalError is one
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"interrupted: the samples generated so far are kept in {args.out}/.cache; run the same command again "
            "to continue",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
