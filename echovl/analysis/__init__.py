"""Analyses behind the paper's claims and its open questions, as commands.

- ``python -m echovl.analysis.clip_steps TRACES...``: how long the chosen clip steps are (``echo.min_step_tokens``).
"""
