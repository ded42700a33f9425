"""Write the shipped example trace folder (``demo/example_traces``) with the project's own code.

    python demo/make_example_traces.py [--out demo/example_traces] [--model PATH] [--steps 1 2]

For each "training step" it samples one group per example problem (:data:`echovl.demo.examples.EXAMPLE_PROBLEMS`)
with the live pipeline (:func:`echovl.demo.live.run_live`: transformers sampling, the project's reward, token
entropy, steps, ``mine_echo_clips``) on the tiny offline demo model, with the step number as the sampling seed,
and writes them with :class:`echovl.traces.TraceWriter`: the same schema training writes. No training happens
between the steps; they are two sampling rounds, so the traces tab has more than one step to browse.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if (REPO / "echovl").is_dir():
    sys.path.insert(0, str(REPO))

from echovl.cli import command_parser, option, parse_settings  # noqa: E402
from echovl.demo.examples import EXAMPLE_PROBLEMS, demo_model_dir  # noqa: E402
from echovl.demo.live import LiveRequest, load_model, run_live  # noqa: E402
from echovl.outputs import Outputs  # noqa: E402
from echovl.testing import tiny_image  # noqa: E402
from echovl.traces import TraceWriter  # noqa: E402


def make_example_traces(out: Path, model: str, steps: list[int], *, num_rollouts: int = 6) -> None:
    loaded = load_model(model)
    with Outputs() as outputs:  # written next to ``out`` and moved in place at the end: no half-written folder
        writer = TraceWriter(outputs.folder(out))
        for step in steps:
            records = []
            for index, problem in enumerate(EXAMPLE_PROBLEMS):
                request = LiveRequest(
                    problem.question,
                    problem.answer,
                    image=tiny_image(problem.image_seed),
                    num_rollouts=num_rollouts,
                    seed=step,
                )
                result = run_live(loaded, request, train_step=step, group_name=f"problem-{index}")
                record = {**result.record, "source": "demo/make_example_traces.py"}
                records.append((record, result.image))
                clip = record["clip"]
                verified = sum(r["verified"] for r in record["rollouts"])
                print(
                    f"step {step} problem-{index}: {verified}/{num_rollouts} verified, "
                    + (f"clip rollout {clip['rollout']} step {clip['step']}" if clip else "no clip")
                )
            writer.write(step, records)


@dataclass
class ExampleTracesOptions:
    out: Path = option(Path(__file__).resolve().parent / "example_traces", help="the example trace folder to write")
    model: str | None = option(None, help="default: the tiny offline demo model (built if needed)")
    steps: list[int] = option(default_factory=lambda: [1, 2], help="step numbers (also the seeds)")


def main(argv=None) -> None:
    parser = command_parser(
        ExampleTracesOptions, prog="python demo/make_example_traces.py", description=__doc__.split("\n\n")[0]
    )
    (args,) = parse_settings(parser, argv)
    make_example_traces(args.out.resolve(), args.model or str(demo_model_dir()), args.steps)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
