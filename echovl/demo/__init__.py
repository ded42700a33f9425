"""The demo's logic (``python demo/app.py`` builds the Gradio UI on top of it; nothing here imports gradio).

- :mod:`echovl.demo.live`: sample a group with transformers, grade, entropy, steps, EchoClip -> trace record.
- :mod:`echovl.demo.traces_view`: browse a trace folder by training step and group.
- :mod:`echovl.demo.render`: HTML views of one group (summary, step-entropy chart, shaded rollouts).
- :mod:`echovl.demo.run_logs`: read a run folder's metric log (EasyR1 ``experiment_log.jsonl`` or the CPU
  experiment's ``metrics.csv``) and find its trace folder.
- :mod:`echovl.demo.overview`: charts of runs over training steps (one run or an A/B), and the traced steps.
- :mod:`echovl.demo.charts`: the SVG line-chart frame both tabs' charts are drawn in, and the trailing mean.
- :mod:`echovl.demo.examples`: shipped example problems and the tiny offline default model.
"""
