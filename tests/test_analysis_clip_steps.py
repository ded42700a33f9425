"""``python -m echovl.analysis.clip_steps``: counts worked out by hand on a tiny trace folder written here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from echovl.analysis.clip_steps import clip_step_stats, main, remine_step
from echovl.traces import TRACE_SCHEMA, TraceError

REPO = Path(__file__).resolve().parents[1]


def _rollout(steps, verified=True, **extra):
    """A rollout record from ``(text_tokens, entropy)`` per step (spans as the trace writer lays them out)."""
    out, start = [], 0
    for tokens, entropy in steps:
        out.append(
            {
                "tokens": [start, start + tokens],
                "chars": [start, start + tokens],
                "text_tokens": tokens,
                "entropy": entropy,
            }
        )
        start += tokens
    return {
        "text": "x" * start,
        "reward": float(verified),
        "accuracy": float(verified),
        "verified": verified,
        "num_tokens": start,
        "steps": out,
        **extra,
    }


def _record(group, rollouts, clip=None, step=3):
    """``clip`` = (rollout, step) as the run chose it, or None."""
    flags = [r["verified"] for r in rollouts]
    chosen = None
    if clip is not None:
        r, s = clip
        span = rollouts[r]["steps"][s]
        chosen = {
            "rollout": r,
            "step": s,
            "step_entropy": span["entropy"],
            "length": span["tokens"][1],
            "token_end": span["tokens"][1],
            "char_end": span["chars"][1],
            "weight": 1.0,
        }
    return {
        "schema": TRACE_SCHEMA,
        "source": "test",
        "train_step": step,
        "group": group,
        "prompt": "p",
        "answer": "a",
        "image": None,
        "degenerate": all(flags),
        "all_wrong": not any(flags),
        "clip": chosen,
        "clips": [chosen] if chosen else [],
        "rollouts": rollouts,
    }


# Group a. Remined: k=1 -> (0, 1) (2.0, the highest, a one-token step). k=2: eligible (0,0) .5, (0,2) 1.0, (1,0) 1.5,
# (1,1) 1.8 -> (1, 1). k=3: (0,0), (0,2), (1,1) -> (1, 1). k=5: (1,1) only -> (1, 1). Changed for 2, 3 and 5.
# Rollout 2 (not verified, 9.0) never counts. The chosen step has 1 token: < 2, < 3, < 5.
GROUP_A = _record(
    "a",
    [_rollout([(4, 0.5), (1, 2.0), (3, 1.0)]), _rollout([(2, 1.5), (5, 1.8)]), _rollout([(6, 9.0)], verified=False)],
    clip=(0, 1),
)
# Group b, a tie across rollouts: (0,0) and (1,0) both 1.25 -> k=1, 2: (0, 0), the lowest rollout. k=3: (0,0) has
# 2 tokens, out -> (1, 0), changed (had the tie gone to rollout 1, k=1 would already be (1, 0): no change). k=5:
# (1,1) only (6 tokens) -> (1, 1), changed. The chosen step has 2 tokens: < 3, < 5.
GROUP_B = _record("b", [_rollout([(2, 1.25), (4, 0.75)]), _rollout([(3, 1.25), (6, 0.5)])], clip=(0, 0))
# Group c, a tie inside a rollout: steps 1 and 2 both 1.5 -> k=1, 2: (0, 1), the earliest step. k=3: step 1 (2
# tokens) out -> (0, 2), changed; k=5: (0, 2), changed. Step 4 has no text token (entropy null). The unverified
# rollout 1 (3.0) never counts. The chosen step has 2 tokens: < 3, < 5.
GROUP_C = _record(
    "c",
    [_rollout([(1, 0.25), (2, 1.5), (5, 1.5), (3, 1.0), (0, None)]), _rollout([(5, 3.0)], verified=False)],
    clip=(0, 1),
)
# Group d: all wrong, no clip: counts nowhere.
GROUP_D = _record("d", [_rollout([(1, 4.0)], verified=False), _rollout([(2, 3.0)], verified=False)])
# Group g: k=1, 2, 3: (0, 0) (4 tokens, 2.0); k=5: (0, 1), changed. The chosen step has 4 tokens: < 5 only.
GROUP_G = _record("g", [_rollout([(4, 2.0), (6, 1.0)])], clip=(0, 0), step=7)

# Totals: 4 clips (a, b, c, g). Step < 2: a -> 1; < 3: a, b, c -> 3; < 5: a, b, c, g -> 4.
# Other clip with min 2: a -> 1; min 3: a, b, c -> 3; min 5: a, b, c, g -> 4.
EXPECTED_LINE = "| {folder} | 4 | 1 (25%) | 3 (75%) | 4 (100%) | 1 (25%) | 3 (75%) | 4 (100%) |"


def _write(folder: Path, name: str, records) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in records))


@pytest.fixture
def traces(tmp_path):
    folder = tmp_path / "traces"
    _write(folder, "step_000003.jsonl", [GROUP_A, GROUP_B, GROUP_C, GROUP_D])
    _write(folder, "step_000007.jsonl", [GROUP_G])
    (folder / "notes.txt").write_text("not a trace file\n")  # ignored
    return folder


def test_remine_step_worked_by_hand():
    assert [remine_step(GROUP_A, k) for k in (1, 2, 3, 5)] == [(0, 1), (1, 1), (1, 1), (1, 1)]
    assert [remine_step(GROUP_B, k) for k in (1, 2, 3, 5)] == [(0, 0), (0, 0), (1, 0), (1, 1)]
    assert [remine_step(GROUP_C, k) for k in (1, 2, 3, 5)] == [(0, 1), (0, 1), (0, 2), (0, 2)]
    assert remine_step(GROUP_D, 1) is None
    assert remine_step(GROUP_G, 6) == (0, 1) and remine_step(GROUP_G, 7) is None


def test_clip_step_stats_worked_by_hand(traces):
    stats = clip_step_stats(traces)
    assert stats.clips == 4
    assert stats.shorter_than == {2: 1, 3: 3, 5: 4}
    assert stats.changed_with_min == {2: 1, 3: 3, 5: 4}
    # min 4: a -> (1, 1), b -> (0, 1) (4 tokens, 0.75 > 0.5), c -> (0, 2): changed; g keeps (0, 0) (4 tokens)
    other = clip_step_stats(traces, thresholds=(1, 4))
    assert other.shorter_than == {1: 0, 4: 3} and other.changed_with_min == {1: 0, 4: 3}


def test_a_luffy_expert_row_is_never_remined():
    # the expert row holds the highest step (2.5): the run's clip is rollout 1's one-token step (1, 0); k=2, 3: (1, 1);
    # k=5: no eligible step, no clip. Were the expert row counted, every k would pick (0, 0) and nothing would change.
    record = _record("e", [_rollout([(6, 2.5)], expert=True), _rollout([(1, 1.0), (4, 0.5)])], clip=(1, 0))
    assert [remine_step(record, k) for k in (1, 2, 3, 5)] == [(1, 0), (1, 1), (1, 1), None]


def test_several_clips_per_group_each_count(tmp_path):
    # top_k: two clips of group a, steps of 1 and 5 tokens; the group counts once for the re-mining (changed for 2,
    # 3, 5 as above)
    record = dict(GROUP_A)
    second = {**GROUP_A["clip"], "rollout": 1, "step": 1}
    record["clips"] = [GROUP_A["clip"], second]
    _write(tmp_path / "t", "step_000001.jsonl", [record])
    stats = clip_step_stats(tmp_path / "t")
    assert stats.clips == 2
    assert stats.shorter_than == {2: 1, 3: 1, 5: 1}
    assert stats.changed_with_min == {2: 1, 3: 1, 5: 1}


def test_cli_prints_the_table_and_writes_csv(traces, tmp_path):
    out_csv = tmp_path / "clip_steps.csv"
    done = subprocess.run(
        [sys.executable, "-m", "echovl.analysis.clip_steps", str(traces), "--csv", str(out_csv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == (
        "| folder | clips | step < 2 tok | step < 3 tok | step < 5 tok | other clip, min 2 | other clip, min 3 "
        "| other clip, min 5 |"
    )
    assert lines[2] == EXPECTED_LINE.format(folder=traces)
    assert lines[3] == f"wrote {out_csv}"
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows == [
        {
            "folder": str(traces),
            "clips": "4",
            "step_tokens_lt_2": "1",
            "step_tokens_lt_3": "3",
            "step_tokens_lt_5": "4",
            "changed_min_2": "1",
            "changed_min_3": "3",
            "changed_min_5": "4",
        }
    ]


def test_cli_thresholds_and_several_folders(traces, tmp_path, capsys):
    empty_clips = tmp_path / "no_clips"
    _write(empty_clips, "step_000001.jsonl", [GROUP_D])
    assert main([str(traces), str(empty_clips), "--thresholds", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| folder | clips | step < 4 tok | other clip, min 4 |"
    assert lines[2:] == [f"| {traces} | 4 | 3 (75%) | 3 (75%) |", f"| {empty_clips} | 0 | 0 (0%) | 0 (0%) |"]


def test_cli_bad_folders_give_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "missing"
    assert main([str(missing)]) == 1
    assert capsys.readouterr().err.strip() == f"clip_steps: {missing}: not a trace folder (no such directory)"

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 1
    assert capsys.readouterr().err.strip() == f"clip_steps: {empty}: no trace files (step_*.jsonl)"

    broken = tmp_path / "broken"
    bad = dict(GROUP_B, clip={**GROUP_B["clip"], "step": 9})  # no step 9
    bad["clips"] = [bad["clip"]]
    _write(broken, "step_000002.jsonl", [GROUP_A, bad])
    assert main([str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"clip_steps: {broken / 'step_000002.jsonl'}: record 2 (group b): malformed clip or steps")

    _write(broken, "step_000002.jsonl", [GROUP_A])
    (broken / "step_000002.jsonl").write_text("{not json\n")
    assert main([str(broken)]) == 1
    assert "step_000002.jsonl:1: not valid JSON" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), "--thresholds", "0"])
    assert exit_info.value.code == 2
    assert "--thresholds must be >= 1" in capsys.readouterr().err


def test_read_errors_raise_trace_error(tmp_path):
    with pytest.raises(TraceError, match="not a trace folder"):
        clip_step_stats(tmp_path / "missing")
