"""Benchmark evaluation: the paper's results table for any set of checkpoints (``python -m echovl.eval``).

- :mod:`echovl.eval.benchmarks`: benchmark parquet files -> :class:`Benchmark` (problems, ID/OOD group, default k).
- :mod:`echovl.eval.checkpoints`: model folders, EasyR1 checkpoints (FSDP shards), hub names.
- :mod:`echovl.eval.store`: the resumable sample cache.
- :mod:`echovl.eval.stats`: the paired bootstrap over problems.
- :mod:`echovl.eval.report`: accuracies, averages, differences; ``results.json``, ``results.csv``, the Markdown table.
- :mod:`echovl.eval.run`: :class:`EvalConfig` and :func:`evaluate`, the whole run.

Prompts and generation are the inference layer's (:mod:`echovl.inference`: ``PromptBuilder``, prompts exactly as
EasyR1's ``RLHFDataset`` builds them; ``load_backend``, vLLM or batched transformers ``generate``). Grading is
:func:`echovl.reward.judge`, the training reward's own verdict. Nothing here imports EasyR1 or vLLM at import time.
"""

from .benchmarks import Benchmark, EvalError, Problem, load_benchmarks
from .checkpoints import ModelRef, resolve_model
from .run import EvalConfig, evaluate
from .stats import Interval, paired_bootstrap

__all__ = [
    "Benchmark",
    "EvalConfig",
    "EvalError",
    "Interval",
    "ModelRef",
    "Problem",
    "evaluate",
    "load_benchmarks",
    "paired_bootstrap",
    "resolve_model",
]
