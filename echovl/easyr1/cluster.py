"""Launching on several nodes: echovl shipped to every node by Ray, and a start-up check of every node.

Ray places the runner, the reward managers and the FSDP workers on any node of the cluster. The worker and trainer
classes travel by module path, so every node must import this echovl: :func:`ray_runtime_env` has Ray ship the
package (``py_modules``). Ray does not ship EasyR1's environment or the files the config names (data, format
prompt, reward function, a local model folder), so :func:`check_nodes` runs :func:`node_report` on every node
before training and stops with a message naming each node and what it lacks. Ray also puts the launch folder on its
workers' import path, ahead of the shipped package, so a node could import another checkout found at that path:
the check also compares a hash of the echovl code each node imports with the launching code's (:func:`package_hash`).

This module imports neither EasyR1 nor echovl's EasyR1 glue: :func:`node_report` must run on a node that lacks
them, to say so.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import ray

__all__ = [
    "EASYR1_ENV",
    "NodeCheckError",
    "check_nodes",
    "node_report",
    "nodes_problem",
    "package_hash",
    "ray_runtime_env",
    "run_paths",
]

EASYR1_ENV = {
    "TOKENIZERS_PARALLELISM": "true",
    "NCCL_DEBUG": "WARN",
    "VLLM_LOGGING_LEVEL": "WARN",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:False",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
    "VLLM_ALLREDUCE_USE_SYMM_MEM": "0",
}
"""The environment EasyR1's ``main`` gives its Ray workers."""


PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""The ``echovl`` package folder that Ray ships to every node."""

PACKAGE_EXCLUDES = ("__pycache__", "*.pyc")


def ray_runtime_env() -> dict:
    """EasyR1's worker environment, and this echovl package shipped by Ray to every node of the cluster.

    ``py_modules``: at launch Ray zips the package folder (about 0.3 MB) into its object store; each node unpacks it
    once and puts it first on its workers' import path, ahead of any echovl installed there. The worker and
    trainer classes travel by module path, so every node runs the launching checkout's code.
    """
    return {"env_vars": dict(EASYR1_ENV), "py_modules": [str(PACKAGE_DIR)], "excludes": list(PACKAGE_EXCLUDES)}


class NodeCheckError(RuntimeError):
    """A node of the Ray cluster cannot run the job; the message says which node lacks what, and what to do."""


WORKER_MODULE = "echovl.easyr1.worker"
"""Imported on every node by the start-up check: echovl (as shipped) on top of EasyR1's worker stack."""


def run_paths(config) -> list[str]:
    """The local files and folders the run reads that exist here: wherever Ray places the runner, the reward
    managers and the workers, they read them at these paths. (Hub names and missing paths are not listed.)"""
    actor = config.worker.actor.model
    candidates = [
        config.data.train_files,
        config.data.val_files,
        config.data.format_prompt,
        config.data.override_chat_template,
        config.data.image_dir,
        config.worker.reward.reward_function,
        actor.model_path,
        actor.tokenizer_path,
        config.trainer.load_checkpoint_path,
    ]
    paths = {str(p).split("@", 1)[0] for p in candidates if p}  # data files may name a split: folder@train
    return sorted(os.path.abspath(p) for p in paths if os.path.exists(p))


def package_hash(folder: str | os.PathLike) -> str:
    """A short content hash of a package's code: sha256 over every ``.py`` file under ``folder`` (sorted by relative
    path; each path and its bytes), the first 12 hex digits. Two folders with the same code give the same hash."""
    folder = Path(folder)
    digest = hashlib.sha256()
    files = sorted(
        (path.relative_to(folder).as_posix(), path)
        for path in folder.rglob("*.py")
        if path.is_file() and "__pycache__" not in path.relative_to(folder).parts
    )
    for relative, path in files:
        data = path.read_bytes()
        digest.update(f"{relative}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:12]


def node_report(paths: Sequence[str]) -> dict:
    """Run on one node: its host name, whether it imports echovl's EasyR1 worker, which ``paths`` it lacks, and
    which echovl it imports (``echovl``: the package folder, ``echovl_hash``: :func:`package_hash` of it; ``None``
    where echovl itself does not import)."""
    report = {
        "host": socket.gethostname(),
        "missing": [p for p in paths if not os.path.exists(p)],
        "error": None,
        "echovl": None,
        "echovl_hash": None,
    }
    try:
        importlib.import_module(WORKER_MODULE)
    except Exception as error:  # ImportError of EasyR1, vLLM, flash-attn, ...: reported for the node, not raised
        report["error"] = f"cannot import {WORKER_MODULE}: {type(error).__name__}: {error}"
    try:
        folder = Path(importlib.import_module("echovl").__file__).resolve().parent
        report["echovl"], report["echovl_hash"] = str(folder), package_hash(folder)
    except Exception as error:  # no echovl at all there: the import error above says so
        if report["error"] is None:
            report["error"] = f"cannot import echovl: {type(error).__name__}: {error}"
    return report


def nodes_problem(reports: Mapping[str, dict], driver_hash: str | None = None) -> str | None:
    """The message for the nodes whose report shows a problem (``None`` when every node is ready). With
    ``driver_hash`` (:func:`package_hash` of the launching echovl), a node that imports echovl code with another hash
    is a problem too."""
    lines = []
    other_code = False
    for node, report in reports.items():
        problems = [report["error"]] if report.get("error") else []
        if report.get("missing"):
            problems.append("missing " + ", ".join(report["missing"]))
        node_hash = report.get("echovl_hash")
        if driver_hash and node_hash and node_hash != driver_hash:
            other_code = True
            problems.append(
                f"imports echovl from {report.get('echovl') or '?'} (code hash {node_hash}), not the launching code "
                f"{PACKAGE_DIR} (code hash {driver_hash})"
            )
        if problems:
            lines.append(f"  node {node} ({report.get('host', '?')}): " + "; ".join(problems))
    if not lines:
        return None
    advice = [
        "Every node needs EasyR1's environment (verl and its GPU stack, e.g. EasyR1's Docker image; echovl itself is "
        "shipped by Ray) and the files the config names at the same paths: put the repository, data and model on a "
        "filesystem mounted at the same path on every node, or copy them there. Then launch again."
    ]
    if other_code:
        advice.append(
            f"A node that imports another echovl: Ray puts the launch folder ({os.getcwd()}) on its workers' import "
            "path ahead of the shipped package, so a different checkout at that path on the node is imported "
            "instead. Make that checkout the same as the launching one (or remove it), or launch from the repository "
            "on a filesystem shared by every node."
        )
    return "\n".join(["these nodes of the Ray cluster cannot run this job:", *lines, *advice])


def check_nodes(config, nodes: Sequence[dict] | None = None) -> None:
    """Before training on several nodes: run :func:`node_report` on every alive node (a zero-CPU task pinned to
    it, under the job's runtime environment) and raise :class:`NodeCheckError` naming what each node lacks, and
    each node that imports other echovl code than the launching package (:data:`PACKAGE_DIR`, by
    :func:`package_hash`). One node needs no check (the head's files were checked with the config, and it imports
    the launching code)."""
    nodes = [n for n in (ray.nodes() if nodes is None else nodes) if n.get("Alive")]
    if len(nodes) < 2:
        return
    paths = run_paths(config)
    refs = {node["NodeManagerAddress"]: _report_on_node(node["NodeID"], paths) for node in nodes}
    reports = {}
    for address, ref in refs.items():
        try:
            reports[address] = ray.get(ref)
        except Exception as error:  # the task could not even start there (e.g. the runtime environment failed)
            reports[address] = {"host": "?", "missing": [], "error": f"no task runs there: {error}"}
    problem = nodes_problem(reports, package_hash(PACKAGE_DIR))
    if problem:
        raise NodeCheckError(problem)


def _report_on_node(node_id: str, paths: Sequence[str]):
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    strategy = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    return ray.remote(num_cpus=0)(node_report).options(scheduling_strategy=strategy).remote(list(paths))
