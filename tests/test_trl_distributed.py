"""EchoGRPOTrainer in two CPU processes (gloo): a group spans processes and is mined on the gathered batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trl_helpers import accuracy  # noqa: F401  (skips this module when TRL is missing)

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_mine_groups_across_processes(tiny_vl_dir, tmp_path):
    from echovl.traces import list_trace_files, read_trace_file

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        str(ROOT / "tests" / "trl_ddp_run.py"),
        str(tiny_vl_dir),
        str(tmp_path),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # one clip per step in the whole batch: exactly one process holds its row
    assert [a + b for a, b in zip(ranks[0]["clip_rows"], ranks[1]["clip_rows"])] == [1, 1]
    for logs in ranks[0]["logs"]:
        assert logs["echo/clips"] == 1 and logs["echo/degenerate_groups"] == 0
        assert logs["echo/loss"] > 0
    files = list_trace_files(tmp_path / "echo_traces")
    assert [step for step, _ in files] == [1, 2]
    (record,) = read_trace_file(files[0][1])  # the one group, all four rollouts, from both processes
    assert [r["verified"] for r in record["rollouts"]] == [True, False, True, False]
    assert record["clip"]["rollout"] in (0, 2)
