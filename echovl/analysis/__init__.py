"""Analyses behind the paper's claims and its open questions, as commands.

- ``python -m echovl.analysis.clip_steps TRACES...``: how long the chosen clip steps are (``echo.min_step_tokens``).
- ``python -m echovl.analysis.entropy_gap --model M --data FILE --out DIR``: the paper's Evidence 1, token and step
  entropy of expert traces against the model's own verified rollouts of the same problems.
- ``python -m echovl.analysis.step_deletion --model M --data FILE --out DIR``: the paper's Evidence 2, accuracy when
  0-50% of the steps of verified rollouts are deleted, high-entropy first, low-entropy first or at random.

What the two entropy analyses share (problems, rollouts, teacher-forced entropy, outputs) is in
:mod:`echovl.analysis.common`; see docs/analysis.md.
"""
