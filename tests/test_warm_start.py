"""python -m echovl.experiments.warm_start: a loadable model folder and a problem file whose prompts, built by the
analyses with the documented flags, are exactly the CPU experiment's (a two-step warm-up at toy sizes)."""

import dataclasses

import torch

from echovl.analysis.common import load_problems
from echovl.experiments.digits import QUESTION, make_problems, solution
from echovl.experiments.tiny_cpu import ExperimentSettings, _prompts
from echovl.experiments.warm_start import write_warm_start
from echovl.inference import PromptBuilder, load_model
from tests.eval_helpers import one_torch_thread  # noqa: F401 (autouse fixture)


def test_warm_start_folder_and_problems_match_the_experiment(tmp_path):
    settings = dataclasses.replace(
        ExperimentSettings.quick(), warmup_max_steps=2, warmup_check=2, train_problems=4, warmup_batch=2
    )
    summary = write_warm_start(tmp_path, settings, problems=3, progress=lambda **kw: _Quiet())
    assert summary["steps"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "problems.parquet"]  # no temporary folder left
    loaded = load_model(tmp_path / "model", device="cpu")
    problems = load_problems(tmp_path / "problems.parquet", solution_key="solution")
    expected = make_problems(max(3, settings.eval_problems), seed=settings.seed + 2)[:3]
    assert [(p.answer, p.solution) for p in problems] == [(q.answer, solution(q)) for q in expected]
    # docs/analysis.md's flags: no format prompt, pictures kept at 28 x 28 (one image token)
    builder = PromptBuilder(loaded.tokenizer, loaded.processor, format_prompt=None, min_pixels=784, max_pixels=3136)
    prompt = builder.build(problems[0].problem, problems[0].images)
    [theirs] = _prompts(loaded.processor, expected[:1])
    # the experiment's prompt is TRL's rendering of its multimodal messages: the image block, then the question
    trl = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    assert prompt.text == theirs.text == loaded.processor.apply_chat_template(trl, add_generation_prompt=True)
    ours, theirs = builder.model_inputs([prompt]), builder.model_inputs([theirs])
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"])
    assert loaded.is_vlm


class _Quiet:
    def update(self, *args):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass
