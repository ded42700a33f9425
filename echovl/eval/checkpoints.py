"""Which model a ``--model`` argument means: a Hugging Face model folder, an EasyR1 checkpoint, or a hub name.

EasyR1 saves ``<save_checkpoint_path>/global_step_N/actor/`` with one FSDP shard per rank
(``model_world_size_W_rank_R.pt``, plus optimizer and extra state) and ``actor/huggingface/`` with the config and
tokenizer only. EasyR1's package (``verl``) has no function that merges the shards; its repository's
``scripts/model_merger.py`` does, writing the merged weights into ``actor/huggingface/``. So a ``global_step_N`` or
``actor`` folder is used through its ``huggingface/`` folder once that holds weights, and is otherwise an error that
gives the exact merge command.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..inference import is_hub_name
from .benchmarks import EvalError

__all__ = ["EASYR1_MERGE_COMMAND", "ModelRef", "resolve_model"]

EASYR1_MERGE_COMMAND = "python3 scripts/model_merger.py --local_dir {actor}"
"""EasyR1's merge command, run from a checkout of hiyouga/EasyR1 (the script is not in the ``verl`` package)."""

_SHARD = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")
_STEP = re.compile(r"^global_step_(\d+)$")
_NAME = re.compile(r"^[^=/\\\s][^=]*$")


@dataclass(frozen=True)
class ModelRef:
    name: str
    """The model's row label in the table (``NAME=PATH``, else derived from the path)."""
    path: str
    """What ``from_pretrained`` loads: a folder, or a hub name."""
    fingerprint: str
    """Changes when the folder's files change (names, sizes, modification times): part of the resume key."""


def _has_weights(folder: Path) -> bool:
    if not (folder / "config.json").is_file():
        return False
    return any(
        any(folder.glob(pattern)) for pattern in ("*.safetensors", "pytorch_model*.bin", "*.safetensors.index.json")
    )


def _fingerprint(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def _easyr1_name(actor: Path) -> str:
    step = actor.resolve().parent
    return f"{step.parent.name}/{step.name}" if step.parent.name else step.name


def _unmerged_error(actor: Path, shards: list[Path]) -> EvalError:
    world = _SHARD.match(shards[0].name).group(1)
    command = EASYR1_MERGE_COMMAND.format(actor=actor.resolve())
    return EvalError(
        f"{actor} is an EasyR1 checkpoint: {len(shards)} FSDP shard(s) of world size {world} "
        f"(model_world_size_{world}_rank_*.pt), not yet merged into a Hugging Face model. EasyR1's package has no "
        "merge function; merge them with EasyR1's script, from a checkout of hiyouga/EasyR1 (commit b44b311b) in an "
        f"environment where EasyR1 is installed:\n    {command}\nIt writes the weights into "
        f"{(actor / 'huggingface').resolve()}; then pass the same --model again."
    )


def resolve_model(spec: str) -> ModelRef:
    """The :class:`ModelRef` of ``PATH`` or ``NAME=PATH`` (see the module docstring); :class:`EvalError` otherwise."""
    name = None
    if "=" in spec and not Path(spec).exists():
        name, spec = spec.split("=", 1)
        if not _NAME.match(name):
            raise EvalError(f"model name {name!r} must not be empty, start with '/' or contain '='")
    path = Path(spec).expanduser()
    if not path.exists():
        if is_hub_name(spec):
            return ModelRef(name or spec, spec, f"hub:{spec}")
        raise EvalError(f"model {spec}: no such folder (nor a hub name like 'owner/name')")
    if not path.is_dir():
        raise EvalError(f"model {spec} is a file; pass a model folder")
    if path.name == "huggingface" and not _has_weights(path) and path.parent.is_dir():
        path = path.parent  # EasyR1's actor/huggingface before the merge: config and tokenizer only
    actor = path / "actor" if (path / "actor").is_dir() else path
    shards = sorted(p for p in actor.iterdir() if _SHARD.match(p.name))
    if shards or actor is not path:
        merged = actor / "huggingface"
        if _has_weights(merged):
            return ModelRef(name or _easyr1_name(actor), str(merged), _fingerprint(merged))
        if shards:
            raise _unmerged_error(actor, shards)
        raise EvalError(f"{actor} has neither EasyR1's model shards nor merged weights in {merged}")
    if _has_weights(path):
        default = _easyr1_name(path.parent) if path.name == "huggingface" else path.resolve().name
        return ModelRef(name or default, str(path), _fingerprint(path))
    steps = sorted(
        (int(m.group(1)), p) for p in path.iterdir() if p.is_dir() and (m := _STEP.match(p.name)) is not None
    )
    if steps:
        raise EvalError(
            f"{path} is a training run with {len(steps)} checkpoint(s) ({', '.join(p.name for _, p in steps[-3:])}"
            f"{', ...' if len(steps) > 3 else ''}): pass one of them, e.g. {steps[-1][1]}"
        )
    raise EvalError(
        f"{path} is not a model folder: no config.json with weights (*.safetensors or pytorch_model*.bin), and no "
        "EasyR1 checkpoint (global_step_N/actor)"
    )
