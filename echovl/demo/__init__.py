"""The demo's logic (``python demo/app.py`` builds the Gradio UI on top of it; nothing here imports gradio).

- :mod:`echovl.demo.live`: sample a group with transformers, grade, entropy, steps, EchoClip -> trace record.
- :mod:`echovl.demo.traces_view`: browse a trace folder by training step and group.
- :mod:`echovl.demo.render`: HTML views of one group (summary, step-entropy chart, shaded rollouts).
- :mod:`echovl.demo.examples`: shipped example problems and the tiny offline default model.
"""
