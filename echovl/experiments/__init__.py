"""Experiments that run end to end on a laptop CPU.

:mod:`echovl.experiments.tiny_cpu` is the quickstart: GRPO with and without EchoRL on a tiny Qwen2.5-VL, showing
advantage degeneration and the gradient the echo term keeps (``bash configs/tiny_cpu_echo.sh``).
"""
