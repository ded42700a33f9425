"""Two-process CPU run of EchoGRPOTrainer, launched by tests/test_trl_distributed.py with torch.distributed.run.

One group of 4 rollouts spans both processes (2 rows each), so mining only works on the gathered batch. Every
process writes ``rank<N>.json`` with what it saw.
"""

from __future__ import annotations

import json
import os
import sys


def main(model_dir: str, out: str) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from echovl.trl import EchoGRPOTrainer
    from tests.trl_helpers import grpo_config, vl_dataset

    def accuracy(completions, **kwargs):  # local rows 0, 1 on each process: global rows 0 and 2 are verified
        return [1.0, 0.0][: len(completions)]

    class Recording(EchoGRPOTrainer):
        masks = []

        def _echo_losses(self, model, inputs):
            self.masks.append(int((inputs["echo_weight"] > 0).any(-1).sum()))
            return super()._echo_losses(model, inputs)

    torch.manual_seed(0)
    trainer = Recording(
        model=AutoModelForImageTextToText.from_pretrained(model_dir),
        reward_funcs=[accuracy],
        args=grpo_config(out, per_device_train_batch_size=2),
        train_dataset=vl_dataset(),
        processing_class=AutoProcessor.from_pretrained(model_dir, padding_side="left"),
        echo_config={"trace_freq": 1},
    )
    trainer.train()
    rank = trainer.accelerator.process_index
    result = {
        "world_size": trainer.accelerator.num_processes,
        "clip_rows": trainer.masks,
        "logs": [h for h in trainer.state.log_history if "loss" in h],
    }
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
