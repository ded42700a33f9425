"""Shared by the analysis tests: small problem files, backends whose responses are known (a scripted one, a fake
vLLM), and a tiny model fitted to answer known problems."""

import csv
import re
import shutil
import sys
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.eval_helpers import FakeLLM as EvalFakeLLM
from tests.eval_helpers import FakeSamplingParams

REASONING = ("first {n} alpha beta.", "second gamma.", "third {n} delta epsilon zeta.", "fourth eta.")
"""The scripted rollouts' reasoning steps; the scripted answer is right only while the "third" step is there."""


def write_problems(path: Path, count=3, solution=True, columns=None) -> Path:
    """Problems "Compute n." with answer n, an expert solution, and ``columns`` (name -> function of n)."""
    rows = []
    for n in range(count):
        row = {"problem": f"Compute {n}.", "answer": str(n)}
        if solution:
            row["solution"] = f"<think>\nexpert {n} omega.\nso it is {n}.\n</think>\n\\boxed{{{n}}}"
        row.update({k: v(n) for k, v in (columns or {}).items()})
        rows.append(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def response(n: int, right: bool) -> str:
    steps = "\n".join(step.format(n=n) for step in REASONING)
    return f"<think>\n{steps}\n</think>\n\\boxed{{{n if right else n + 1}}}"


class Scripted:
    """Rollouts: sample j of problem n is right unless ``wrong(n, j)``. Continuations (prompts with a response
    prefix): the right answer when the prefix still holds the "third" step, else a wrong one. Records its calls."""

    name = "scripted"

    def __init__(self, tokenizer, wrong=lambda n, j: j == 1, allow_rollouts=True):
        self.tokenizer, self.processor = tokenizer, None
        self.wrong = wrong
        self.allow_rollouts = allow_rollouts
        self.calls = []

    def generate(self, prompts, sampling, *, seeds=None):
        self.calls.append((list(prompts), sampling, list(seeds)))
        out = []
        for prompt in prompts:
            n = int(re.search(r"Compute (\d+)\.", prompt.chat_text).group(1))
            if prompt.prefix_ids:
                right = "third" in prompt.prefix_text
                out.append([f"\\boxed{{{n if right else n + 7}}}"] * sampling.n)
            else:
                assert self.allow_rollouts, "rollouts were read from a file, none should be generated"
                out.append([response(n, not self.wrong(n, j)) for j in range(sampling.n)])
        return out


def factory(backend):
    return lambda name, model_path, **options: backend


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def number(cell: str) -> float:
    return float("nan") if cell == "" else float(cell)


class FakeLLM(EvalFakeLLM):
    """The evaluation tests' fake vLLM, answering the scripted task: it reads each request's token ids back to text
    and answers like Scripted (sample 1 of each problem wrong; a continuation right while its prefix holds the
    "third" step). Set ``tokenizer``."""

    max_model_len = 512
    tokenizer = None

    @staticmethod
    def answer(i, j, request, params):
        text = FakeLLM.tokenizer.decode(request["prompt_token_ids"])
        n = int(text.split("Compute ")[1].split(".")[0])
        prefix = text.partition("<|im_start|>assistant\n")[2]
        if prefix:
            return f"\\boxed{{{n if 'third' in prefix else n + 7}}}"
        return response(n, j != 1)


def install_fake_vllm(monkeypatch, model_dir) -> type:
    """Put a fake ``vllm`` module (:class:`FakeLLM`) in ``sys.modules``; returns FakeLLM (``instances`` cleared)."""
    from transformers import AutoTokenizer

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances.clear()
    FakeLLM.tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return FakeLLM


def fitted_response(n: int) -> str:
    """What :func:`fit_tiny_lm` teaches the model to answer to "Compute n." (right, boxed, with a think block)."""
    return f"<think>\nso it is {n}.\n</think>\n\\boxed{{{n}}}"


def fit_tiny_lm(source: Path, target: Path, problems: int = 2, sharpen: float = 3.0) -> float:
    """Copy the tiny model folder ``source`` to ``target`` with weights fitted (full-batch Adam, float32, CPU) so that
    the chat prompt of "Compute n." (no format prompt) is answered with :func:`fitted_response` and ``<|im_end|>``
    for n < ``problems``; then the output layer is scaled by ``sharpen`` (the same as dividing the temperature by it),
    so that sampling at the paper's 0.6 gives exactly these responses.

    Returns the smallest probability, at temperature 0.6, of a token of the fitted responses (checked by the caller).
    """
    import torch
    from transformers import AutoModelForCausalLM

    from echovl.inference import PromptBuilder, load_processing

    shutil.copytree(source, target)
    tokenizer, processor = load_processing(target)
    builder = PromptBuilder(tokenizer, processor, format_prompt=None)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pairs = [
        (list(builder.build(f"Compute {n}.", multimodal=False).token_ids),
         tokenizer.encode(fitted_response(n), add_special_tokens=False) + [end])
        for n in range(problems)
    ]  # fmt: skip
    length = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), length), tokenizer.pad_token_id)
    labels = torch.full((len(pairs), length), -100)
    attention = torch.zeros(len(pairs), length, dtype=torch.long)
    for i, (prompt, answer) in enumerate(pairs):
        ids[i, : len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        attention[i, : len(prompt) + len(answer)] = 1
        labels[i, len(prompt) : len(prompt) + len(answer)] = torch.tensor(answer)
    model = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    targets, counted = labels[:, 1:], labels[:, 1:] != -100

    def smallest_probability(logits) -> float:
        log_p = torch.log_softmax(logits[:, :-1].float() / 0.6, dim=-1)
        return float(log_p.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)[counted].min().exp())

    for _ in range(400):
        out = model(input_ids=ids, attention_mask=attention, labels=labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if smallest_probability(out.logits.detach()) > 0.99:
            break
    model.eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
        smallest = smallest_probability(model(input_ids=ids, attention_mask=attention).logits)
    model.save_pretrained(target, safe_serialization=True)
    return smallest
