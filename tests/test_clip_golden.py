"""The paper's path (``selection: max``) bit for bit as it was before the clip selection variants landed.

GOLDEN REGRESSION VALUES: every expected value below was recorded from the code BEFORE the variants (``top_k``,
``soft``, weighted echo NLL; commit 84a5c1d), i.e. from its parent commit 15b8286, by running this file as a script
against a worktree of that commit:

    git worktree add --detach /tmp/wt_golden 15b8286
    cd /tmp && PYTHONPATH=/tmp/wt_golden /work/main/.venv/bin/python /work/main/tests/test_clip_golden.py

(the script prints the ``GOLDEN_*`` literals). Floats are stored with ``float.hex()`` and compared with
``torch.equal``: the clips, the loss and its gradient must be exactly the old ones, not close to them.

The inputs are built with Python's ``random.Random`` (its sequence for a seed is fixed across Python versions), not
with torch's generator, so that they do not depend on the torch version.
"""

from __future__ import annotations

import hashlib
import random
import sys

import pytest
import torch

from echovl.clip import mine_echo_clips
from echovl.loss import echo_nll

T_SMALL = 12


def _small_batch():
    """12 rows of 12 tokens, groups (ids deliberately out of order) 30, 10, 20, 5, 40:

    - group 30, rows 0-2: row 0 (not verified) holds the highest step (5.0 per token), which must be ignored.
      Rows 1 and 2 tie: row 1's steps 1 and 3 and row 2's step 1 hold the same three values (3.5, 2.75, 3.25,
      in another order in row 2), the group's maximum -> row 1 (lowest row), step 1 (earliest step). Row 2's
      step 1 also holds a vision token of entropy 50 (text_mask False) that must not count.
    - group 10, rows 3-4: all wrong -> no clip.
    - group 20, rows 5-7: all correct (degenerate); row 6's step 1 is a one-token step of entropy 4.0, the
      group's best with ``min_step_tokens=1``.
    - group 5, rows 8, 9, 11: row 8 has no response (all -1), row 9 is random with NaN / inf on padding and on
      a vision token, row 11 is not verified.
    - group 40, row 10: verified, but its response holds only non-text tokens -> no eligible step, no clip.
    """
    rng = random.Random(20261122)
    steps = [
        [-1, -1, 0, 0, 0, 1, 1, 2, 2, 2, -1, -1],
        [-1, -1, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3],
        [-1, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1],
        [0, 0, 1, 1, 1, 2, 2, 2, 2, -1, -1, -1],
        [0, 1, 1, 2, 2, 2, 3, 3, -1, -1, -1, -1],
        [0, 0, 0, 1, 1, 1, 2, 2, 2, 2, -1, -1],
        [0, 0, 1, 2, 2, 2, 3, 3, -1, -1, -1, -1],
        [-1, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2],
        [-1] * T_SMALL,
        [0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1, -1],
        [0, 0, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1],
        [0, 0, 1, 1, 1, 1, 2, 2, 2, -1, -1, -1],
    ]
    entropy = [[rng.random() * 3 for _ in range(T_SMALL)] for _ in steps]
    text = [[True] * T_SMALL for _ in steps]
    entropy[0][5:7] = [5.0, 5.0]
    entropy[1][4:7] = [3.5, 2.75, 3.25]
    entropy[1][9:12] = [3.5, 2.75, 3.25]
    entropy[2][4:8] = [3.25, 50.0, 3.5, 2.75]
    text[2][5] = False
    entropy[6][2] = 4.0
    entropy[9][4] = float("inf")
    text[9][4] = False
    entropy[9][9] = float("nan")
    text[10][:4] = [False] * 4
    verified = [False, True, True, False, False, True, True, True, True, True, True, False]
    group = [30, 30, 30, 10, 10, 20, 20, 20, 5, 5, 40, 5]
    log_probs = [[-3 * rng.random() for _ in range(T_SMALL)] for _ in steps]
    return _tensors(entropy, steps, text, verified, group, log_probs)


def _medium_batch():
    """48 rows of 150 tokens (three 64-token words for the padding skip), right padding of random length, steps
    as ``step_index`` makes them (a new step with probability 0.15), 30% vision tokens, entropies on a coarse
    grid (many exact ties), 12 groups of 4."""
    rng = random.Random(7)
    batch, length = 48, 150
    entropy, steps, text, log_probs = [], [], [], []
    for _ in range(batch):
        used = rng.randint(0, length)
        step, row_steps = 0, []
        for t in range(length):
            if t >= used:
                row_steps.append(-1)
                continue
            if t and rng.random() < 0.15:
                step += 1
            row_steps.append(step)
        steps.append(row_steps)
        entropy.append([rng.randint(0, 8) / 4 for _ in range(length)])
        text.append([rng.random() >= 0.3 for _ in range(length)])
        log_probs.append([-4 * rng.random() for _ in range(length)])
    verified = [rng.random() < 0.6 for _ in range(batch)]
    group = [rng.randrange(12) for _ in range(batch)]
    return _tensors(entropy, steps, text, verified, group, log_probs)


def _tensors(entropy, steps, text, verified, group, log_probs):
    return (
        torch.tensor(entropy, dtype=torch.float32),
        torch.tensor(steps, dtype=torch.long),
        torch.tensor(text, dtype=torch.bool),
        torch.tensor(verified, dtype=torch.bool),
        torch.tensor(group, dtype=torch.long),
        torch.tensor(log_probs, dtype=torch.float32),
    )


def _run(batch, **mining_kwargs):
    """Mine, then the echo NLL and its gradient w.r.t. the log-probs."""
    entropy, steps, text, verified, group, log_probs = batch
    clips = mine_echo_clips(entropy, steps, text, verified, group, **mining_kwargs)
    log_probs = log_probs.clone().requires_grad_(True)
    total, count = echo_nll(log_probs, clips.mask)
    total.backward()
    return clips, total.detach(), count, log_probs.grad


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def _record(batch, full: bool) -> dict:
    """The values the golden literals hold (also what the script prints)."""
    clips, total, count, grad = _run(batch, min_step_tokens=1, scope="all")
    out = {
        "group": clips.group.tolist(),
        "row": clips.row.tolist(),
        "step": clips.step.tolist(),
        "length": clips.length.tolist(),
        "step_entropy": [float(v).hex() for v in clips.step_entropy.tolist()],
        "loss": float(total).hex(),
        "count": int(count),
    }
    if full:
        out["mask"] = ["".join("1" if v else "0" for v in row) for row in clips.mask.tolist()]
        out["grad"] = {(r, c): float(grad[r, c]).hex() for r, c in grad.nonzero().tolist()}  # zero everywhere else
    else:
        out["mask_sha256"] = _sha256(clips.mask)
        out["grad_sha256"] = _sha256(grad)
    return out


# ---- GOLDEN REGRESSION VALUES, recorded from commit 15b8286 (see the module docstring) ----
GOLDEN_SMALL: dict = {
    "group": [5, 20, 30],
    "row": [9, 6, 1],
    "step": [0, 1, 1],
    "length": [3, 3, 5],
    "step_entropy": ["0x1.31bd540000000p+1", "0x1.0000000000000p+2", "0x1.9555560000000p+1"],
    "loss": "0x1.20d0580000000p+2",
    "count": 3,
    "mask": [
        "000000000000",
        "001111100000",
        "000000000000",
        "000000000000",
        "000000000000",
        "000000000000",
        "111000000000",
        "000000000000",
        "000000000000",
        "111000000000",
        "000000000000",
        "000000000000",
    ],
    "grad": {
        (1, 2): "-0x1.99999a0000000p-3",
        (1, 3): "-0x1.99999a0000000p-3",
        (1, 4): "-0x1.99999a0000000p-3",
        (1, 5): "-0x1.99999a0000000p-3",
        (1, 6): "-0x1.99999a0000000p-3",
        (6, 0): "-0x1.5555560000000p-2",
        (6, 1): "-0x1.5555560000000p-2",
        (6, 2): "-0x1.5555560000000p-2",
        (9, 0): "-0x1.5555560000000p-2",
        (9, 1): "-0x1.5555560000000p-2",
        (9, 2): "-0x1.5555560000000p-2",
    },
}
GOLDEN_MEDIUM: dict = {
    "group": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
    "row": [10, 44, 41, 8, 27, 29, 39, 25, 32, 14, 30, 26],
    "step": [1, 0, 0, 10, 8, 1, 8, 8, 4, 1, 13, 9],
    "length": [4, 2, 1, 38, 63, 7, 21, 32, 26, 11, 64, 30],
    "step_entropy": [
        "0x1.c000000000000p+0",
        "0x1.a000000000000p+0",
        "0x1.0000000000000p+1",
        "0x1.0000000000000p+1",
        "0x1.c000000000000p+0",
        "0x1.b333340000000p+0",
        "0x1.9555560000000p+0",
        "0x1.8ccccc0000000p+0",
        "0x1.0000000000000p+1",
        "0x1.0000000000000p+1",
        "0x1.c000000000000p+0",
        "0x1.a000000000000p+0",
    ],
    "loss": "0x1.6080320000000p+4",
    "count": 12,
    "mask_sha256": "6358eede76fa1cf3ee786e6973b033f0d78e9315ae6d2941fce1d65f09825f4c",
    "grad_sha256": "c8b7dfbac57a3509c3a0c57cade5601d7d728890b68e012a2dfb01c3f280529e",
}
# ---- end of golden values ----


def _paper_kwargs():
    from echovl.config import EchoConfig

    return EchoConfig(min_step_tokens=1).mining_kwargs()


def _assert_matches(batch, golden: dict, full: bool, **mining_kwargs):
    clips, total, count, grad = _run(batch, **mining_kwargs)
    assert clips.group.dtype == clips.row.dtype == clips.step.dtype == clips.length.dtype == torch.long
    assert torch.equal(clips.group, torch.tensor(golden["group"], dtype=torch.long))
    assert torch.equal(clips.row, torch.tensor(golden["row"], dtype=torch.long))
    assert torch.equal(clips.step, torch.tensor(golden["step"], dtype=torch.long))
    assert torch.equal(clips.length, torch.tensor(golden["length"], dtype=torch.long))
    assert clips.step_entropy.dtype == torch.float32
    expected_entropy = torch.tensor([float.fromhex(h) for h in golden["step_entropy"]], dtype=torch.float32)
    assert torch.equal(clips.step_entropy, expected_entropy)
    assert total.dtype == torch.float32 and torch.equal(total, torch.tensor(float.fromhex(golden["loss"])))
    assert torch.equal(count, torch.tensor(golden["count"]))
    assert clips.mask.dtype == torch.bool and grad.dtype == torch.float32
    if full:
        expected_mask = torch.tensor([[c == "1" for c in row] for row in golden["mask"]], dtype=torch.bool)
        assert torch.equal(clips.mask, expected_mask)
        expected_grad = torch.zeros_like(grad)
        for (r, c), value in golden["grad"].items():
            expected_grad[r, c] = float.fromhex(value)
        assert torch.equal(grad, expected_grad)
    else:
        assert _sha256(clips.mask) == golden["mask_sha256"]
        assert _sha256(grad) == golden["grad_sha256"]


def test_small_batch_hand_checks():
    """What the small batch was built to show (worked out by hand, independent of the golden values)."""
    clips, _, count, _ = _run(_small_batch(), **_paper_kwargs())
    assert clips.group.tolist() == [5, 20, 30]  # 10: all wrong; 40: no eligible step
    assert clips.row.tolist()[1:] == [6, 1] and clips.step.tolist()[1:] == [1, 1]
    # mean in float64 (9.5 / 3), then float32
    assert clips.step_entropy[1:].tolist() == torch.tensor([4.0, 9.5 / 3], dtype=torch.float32).tolist()
    assert clips.length.tolist()[1:] == [3, 5]  # row 6: steps 0-1; row 1: steps 0-1 (positions 2-6)
    assert int(count) == 3


@pytest.mark.parametrize("how", ["explicit", "config"])
@pytest.mark.parametrize("name", ["small", "medium"])
def test_paper_path_equals_the_values_before_the_variants(name, how):
    batch, golden = (_small_batch(), GOLDEN_SMALL) if name == "small" else (_medium_batch(), GOLDEN_MEDIUM)
    assert golden, "golden values missing"
    if how == "explicit":
        kwargs = {"min_step_tokens": 1, "scope": "all", "selection": "max"}
    else:  # EchoConfig's defaults, except min_step_tokens=1 (the paper's setting)
        kwargs = _paper_kwargs()
        assert kwargs["selection"] == "max" and kwargs["scope"] == "all" and kwargs["min_step_tokens"] == 1
    _assert_matches(batch, golden, full=name == "small", **kwargs)


if __name__ == "__main__":  # print the golden literals for the echovl on the path (see the module docstring)
    import pprint

    import echovl.clip

    print(f"# from {echovl.clip.__file__}", file=sys.stderr)
    for label, batch, full in (("GOLDEN_SMALL", _small_batch(), True), ("GOLDEN_MEDIUM", _medium_batch(), False)):
        print(f"{label}: dict = " + pprint.pformat(_record(batch, full), width=115, sort_dicts=False))
