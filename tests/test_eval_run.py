"""End to end: python -m echovl.eval on small text and Geometry3K files (tiny models, transformers backend), known
accuracies and differences with a scripted backend, avg@k, --limit, resuming after an interruption, bad input."""

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from echovl.data.geometry3k import SCHEMA as GEO3K_SCHEMA
from echovl.eval import run as run_module
from echovl.eval.__main__ import main
from echovl.eval.benchmarks import Benchmark, EvalError, Problem
from echovl.eval.run import EvalConfig, evaluate, paper_set_warnings
from echovl.inference import PromptBuilder, load_backend
from echovl.testing import tiny_image
from tests.eval_helpers import FakeLLM, fake_vllm, one_torch_thread  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parents[1]
FORMAT_PROMPT = REPO / "configs" / "format_prompt" / "math_think.jinja"
SMALL_PIXELS = dict(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)


def write(path: Path, rows, schema=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def text_benchmarks(root: Path, problems=4) -> Path:
    """One file, two benchmarks by data_source: arithmetic (numbers) and a multiple-choice one (letters)."""
    rows = [{"problem": f"Compute {n}.", "answer": str(n), "data_source": "arith"} for n in range(problems)]
    rows += [{"problem": f"Letter {n}?", "answer": "ABCD"[n % 4], "data_source": "choice"} for n in range(problems)]
    rows += rows[:1]  # a repeated row is the same problem
    return write(root / "bench" / "mixed.parquet", rows)


def geo3k_benchmark(root: Path, problems=3) -> Path:
    rows = []
    for i in range(problems):
        buffer = io.BytesIO()
        tiny_image(i).save(buffer, format="PNG")
        rows.append(
            {
                "problem": f"<image>Find x in figure {i}.",
                "answer": str(i + 2),
                "images": [{"bytes": buffer.getvalue(), "path": None}],
                "id": 700 + i,
                "choices": [],
            }
        )
    return write(root / "geometry3k" / "test.parquet", rows, GEO3K_SCHEMA)


def model_copies(source: Path, root: Path, names=("base", "echo")) -> list[Path]:
    out = []
    for name in names:
        shutil.copytree(source, root / "models" / name)
        out.append(root / "models" / name)
    return out


def read_samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def recomputed(samples: list[dict]) -> dict[str, float]:
    """Accuracy per benchmark from samples.jsonl: mean over problems of the mean over samples."""
    per_problem: dict[tuple[str, int], list[bool]] = {}
    for s in samples:
        per_problem.setdefault((s["benchmark"], s["problem_index"]), []).append(s["correct"])
    per_bench: dict[str, list[float]] = {}
    for (bench, _), values in per_problem.items():
        per_bench.setdefault(bench, []).append(float(np.mean(values)))
    return {b: float(np.mean(v)) for b, v in per_bench.items()}


def check_outputs(out: Path, results: dict, names: list[str], expected_samples: dict[str, int]):
    """Every output there, and consistent: the table recomputed from samples.jsonl."""
    assert json.loads((out / "results.json").read_text()) == results
    table = (out / "table.md").read_text()
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert csv_lines[0] == "model,column,group,k,problems,accuracy,baseline,difference,low,high"
    assert len(csv_lines) == 1 + len(names) * len(results["columns"])
    for model in results["models"]:
        samples = read_samples(out / model["name"] / "samples.jsonl")
        counts = {}
        for s in samples:
            counts[s["benchmark"]] = counts.get(s["benchmark"], 0) + 1
            assert set(s) >= {
                "benchmark",
                "problem_id",
                "sample",
                "prompt",
                "response",
                "answer",
                "reference",
                "correct",
            }
        assert counts == expected_samples
        accuracy = recomputed(samples)
        for bench, value in accuracy.items():
            assert model["accuracy"][bench] == pytest.approx(value)
        for column in results["columns"]:
            if column["key"].endswith("avg"):
                mean = np.mean([accuracy[b] for b in column["benchmarks"]])
                assert model["accuracy"][column["key"]] == pytest.approx(mean)
        assert re.search(rf"^\| {re.escape(model['name'])} \|", table, re.M)
    assert not list(out.rglob(".*.tmp"))  # no temporary file left behind


def test_end_to_end_text_with_tiny_models(tmp_path, tiny_lm_dir, capsys):
    bench = text_benchmarks(tmp_path)
    base, echo = model_copies(tiny_lm_dir, tmp_path)
    config = EvalConfig(
        models=[str(base), str(echo)],
        benchmarks=[str(bench)],
        out=tmp_path / "out",
        backend="transformers",
        k_per_benchmark={"arith": 2},
        ood=["choice"],
        max_new_tokens=4,
        batch_size=4,
        bootstrap=200,
        format_prompt=str(FORMAT_PROMPT),
    )
    results = evaluate(config)
    assert [c["key"] for c in results["columns"]] == ["arith", "ID avg", "choice", "OOD avg"]
    assert [(b["name"], b["k"], b["problems"]) for b in results["benchmarks"]] == [("arith", 2, 4), ("choice", 1, 4)]
    check_outputs(tmp_path / "out", results, ["base", "echo"], {"arith": 8, "choice": 4})
    # the prompt is the training prompt
    sample = read_samples(tmp_path / "out" / "base" / "samples.jsonl")[0]
    tokenizer = AutoTokenizer.from_pretrained(base)
    expected = PromptBuilder(tokenizer, format_prompt=FORMAT_PROMPT.read_text()).build("Compute 0.")
    assert sample["prompt"] == expected.text and sample["reference"] == "0"
    diffs = {d["column"]: d for d in results["differences"]}
    assert set(diffs) == {"arith", "ID avg", "choice", "OOD avg"} and all(
        d["baseline"] == "base" for d in diffs.values()
    )
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "out" / "table.md").read_text() and "| echo \u2212 base |" in printed


def test_end_to_end_geometry3k_with_a_tiny_vl_model(tmp_path, tiny_vl_dir):
    bench = geo3k_benchmark(tmp_path)
    out = tmp_path / "out"
    code = main(
        ["--model", f"vl={tiny_vl_dir}", "--benchmarks", str(bench), "--out", str(out), "--backend", "transformers"]
        + ["--max-new-tokens", "6", "--k", "2", "--limit", "2", "--min-pixels", "3136", "--max-pixels", "12544"]
        + ["--no-progress", "--bootstrap", "200"]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert [(b["name"], b["title"], b["k"], b["problems"]) for b in results["benchmarks"]] == [
        ("geometry3k", "Geometry3K", 2, 2)
    ]
    check_outputs(out, results, ["vl"], {"geometry3k": 4})
    samples = read_samples(out / "vl" / "samples.jsonl")
    assert [s["problem_id"] for s in samples] == ["700", "700", "701", "701"]
    assert all("<|vision_start|><|image_pad|><|vision_end|>Find x" in s["prompt"] for s in samples)
    assert results["differences"] == []


# -------------------------------------------------------------------------------------------- scripted models


class Interrupted(Exception):
    pass


class Scripted:
    """A backend whose answers are known: ``skill(n, j)`` says whether sample j of problem n is right. Counts the
    samples it generates, and raises after ``fail_after`` calls (a killed run)."""

    name = "scripted"

    def __init__(self, tokenizer, skill, fail_after=None):
        self.tokenizer, self.processor = tokenizer, None
        self.skill, self.fail_after = skill, fail_after
        self.calls = 0
        self.generated = []

    def generate(self, prompts, sampling, *, seeds=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise Interrupted
        self.calls += 1
        texts = []
        for prompt, seed in zip(prompts, seeds):
            n = int(re.search(r"(?:Compute|Letter) (\d+)", prompt.text).group(1))
            letter = "Letter" in prompt.text
            answers = []
            for j in range(sampling.n):
                right = self.skill(n, j)
                self.generated.append((n, letter, j))
                if letter:
                    choice = "ABCD"[(n + (0 if right else 1)) % 4]
                    answers.append(f"<think>\nhmm {seed}\n</think>\nThe answer is ({choice}).")
                else:
                    answers.append(f"<think>\nso {seed}\n</think>\n\\boxed{{{n if right else n + 1}}}")
            texts.append(answers)
        return texts


def scripted_factory(tokenizer, skills, fail_after=None, made=None):
    def factory(name, model_path, **options):
        backend = Scripted(tokenizer, skills[Path(model_path).name], fail_after)
        if made is not None:
            made.append(backend)
        return backend

    return factory


SKILLS = {"base": lambda n, j: (n + j) % 2 == 0, "echo": lambda n, j: True}


def scripted_config(tmp_path, models, out="out", **overrides):
    fields = dict(
        models=[str(m) for m in models],
        benchmarks=[str(text_benchmarks(tmp_path) if not (tmp_path / "bench").exists() else tmp_path / "bench")],
        out=tmp_path / out,
        backend="transformers",
        k_per_benchmark={"arith": 2, "choice": 2},
        ood=["choice"],
        batch_size=4,
        bootstrap=500,
    )
    fields.update(overrides)
    return EvalConfig(**fields)


def test_known_accuracies_avg_at_k_and_differences(tmp_path, tiny_lm_dir, qwen_tokenizer):
    models = model_copies(tiny_lm_dir, tmp_path)
    results = evaluate(scripted_config(tmp_path, models), backend_factory=scripted_factory(qwen_tokenizer, SKILLS))
    base, echo = results["models"]
    # base: sample j of problem n is right when n + j is even, so each problem scores 1/2 over k = 2
    assert base["accuracy"] == {"arith": 0.5, "ID avg": 0.5, "choice": 0.5, "OOD avg": 0.5}
    assert echo["accuracy"] == {"arith": 1.0, "ID avg": 1.0, "choice": 1.0, "OOD avg": 1.0}
    for d in results["differences"]:
        assert (d["difference"], d["low"], d["high"], d["excludes_zero"]) == (0.5, 0.5, 0.5, True)
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| base | 50.0 | 50.0 | 50.0 | 50.0 |" in table
    assert "| echo \u2212 base | +50.0* [+50.0, +50.0] |" in table
    check_outputs(tmp_path / "out", results, ["base", "echo"], {"arith": 8, "choice": 8})
    # greedy decoding is one sample per problem
    greedy = evaluate(
        scripted_config(tmp_path, models, out="greedy", greedy=True),
        backend_factory=scripted_factory(qwen_tokenizer, SKILLS),
    )
    assert [b["k"] for b in greedy["benchmarks"]] == [1, 1]
    assert greedy["models"][0]["accuracy"]["arith"] == 0.5  # problems 0 and 2 of 0..3, sample 0


def test_resume_after_an_interruption_generates_only_what_is_missing(tmp_path, tiny_lm_dir, qwen_tokenizer):
    models = model_copies(tiny_lm_dir, tmp_path, names=("base",))
    full = evaluate(
        scripted_config(tmp_path, models, out="full"), backend_factory=scripted_factory(qwen_tokenizer, SKILLS)
    )
    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        evaluate(
            scripted_config(tmp_path, models), backend_factory=scripted_factory(qwen_tokenizer, SKILLS, fail_after=3)
        )
    assert not (out / "base" / "samples.jsonl").exists() and not (out / "results.json").exists()
    cached = sum(len(p.read_text().splitlines()) for p in (out / ".cache" / "base").glob("*.jsonl"))
    assert cached == 3 * 2 * 2  # three calls of two problems with k = 2 samples each
    next(iter((out / ".cache" / "base").glob("choice.*.jsonl"))).open("a").write('{"problem_index": 3, "sam')  # torn
    made = []
    resumed = evaluate(
        scripted_config(tmp_path, models), backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made)
    )
    assert len(made[0].generated) == 16 - cached  # finished samples were not generated again
    assert resumed["models"] == full["models"]
    assert read_samples(out / "base" / "samples.jsonl") == read_samples(tmp_path / "full" / "base" / "samples.jsonl")
    # a finished run is not generated again at all; more problems (--limit) or samples (k) only add the missing ones
    made.clear()
    evaluate(scripted_config(tmp_path, models), backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made))
    assert made == []
    evaluate(
        scripted_config(tmp_path, models, k_per_benchmark={"arith": 3, "choice": 2}),
        backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made),
    )
    assert sorted(made[0].generated) == [(n, False, 0) for n in range(4)]  # sample 2 of each arith problem
    # different sampling settings are a different cache
    made.clear()
    evaluate(
        scripted_config(tmp_path, models, temperature=1.0, limit=1),
        backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made),
    )
    assert len(made[0].generated) == 4


def test_limit_then_more_problems(tmp_path, tiny_lm_dir, qwen_tokenizer):
    models = model_copies(tiny_lm_dir, tmp_path, names=("base",))
    made = []
    first = evaluate(
        scripted_config(tmp_path, models, limit=2), backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made)
    )
    assert [b["problems"] for b in first["benchmarks"]] == [2, 2]
    assert len(read_samples(tmp_path / "out" / "base" / "samples.jsonl")) == 8
    evaluate(
        scripted_config(tmp_path, models, limit=3), backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made)
    )
    assert sorted(made[1].generated) == [(2, False, 0), (2, False, 1), (2, True, 0), (2, True, 1)]


def test_resume_with_the_transformers_backend_gives_the_uninterrupted_samples(tmp_path, tiny_lm_dir):
    """Seeds follow the problems and the calls are a fixed partition of each benchmark, so a run killed after its
    first call and resumed samples exactly what an uninterrupted run samples."""
    bench = write(tmp_path / "b" / "sums.parquet", [{"problem": f"Compute {n}.", "answer": str(n)} for n in range(4)])

    def config(out):
        return EvalConfig(
            models=[str(tiny_lm_dir)],
            benchmarks=[str(bench)],
            out=tmp_path / out,
            backend="transformers",
            k=2,
            batch_size=4,  # 2 problems x 2 samples per call: two calls
            max_new_tokens=5,
            temperature=1.0,
            bootstrap=100,
        )

    evaluate(config("full"))
    calls = []

    def failing(name, model_path, **options):
        backend = load_backend(name, model_path, **options)
        real = backend.generate

        def generate(*args, **kwargs):
            if calls:
                raise Interrupted
            calls.append(1)
            return real(*args, **kwargs)

        backend.generate = generate
        return backend

    with pytest.raises(Interrupted):
        evaluate(config("out"), backend_factory=failing)
    evaluate(config("out"))
    name = Path(tiny_lm_dir).name
    assert read_samples(tmp_path / "out" / name / "samples.jsonl") == read_samples(
        tmp_path / "full" / name / "samples.jsonl"
    )


def test_samples_graded_by_an_older_grader_are_graded_again(tmp_path, tiny_lm_dir, qwen_tokenizer):
    models = model_copies(tiny_lm_dir, tmp_path, names=("echo",))
    evaluate(scripted_config(tmp_path, models, limit=1), backend_factory=scripted_factory(qwen_tokenizer, SKILLS))
    [cache] = (tmp_path / "out" / ".cache" / "echo").glob("arith.*.jsonl")
    stale = [dict(json.loads(line), correct=False, grader=0) for line in cache.read_text().splitlines()]
    cache.write_text("".join(json.dumps(r) + "\n" for r in stale))
    made = []
    results = evaluate(
        scripted_config(tmp_path, models, limit=1), backend_factory=scripted_factory(qwen_tokenizer, SKILLS, made=made)
    )
    assert made == [] and results["models"][0]["accuracy"]["arith"] == 1.0


def outputs_outside_the_cache(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".cache" not in p.parts}


def test_a_failed_run_writes_none_of_its_outputs_and_a_rerun_reuses_the_cache(tmp_path, tiny_lm_dir):
    """Model B's generation fails after model A finished: no samples.jsonl (not even A's) nor results.*; a previous
    run's outputs stay as they were; the rerun generates only B and writes everything."""
    bench = write(tmp_path / "b" / "sums.parquet", [{"problem": f"Compute {n}.", "answer": str(n)} for n in range(2)])
    base, echo = model_copies(tiny_lm_dir, tmp_path)
    loaded = []

    def factory(fail):
        def make(name, model_path, **options):
            loaded.append(Path(model_path).name)
            backend = load_backend(name, model_path, **options)
            if Path(model_path).name == fail:
                backend.generate = lambda *a, **k: (_ for _ in ()).throw(Interrupted())
            return backend

        return make

    def config(**overrides):
        fields = dict(max_new_tokens=3, batch_size=4, bootstrap=100, k=1, format_prompt=None, temperature=1.0)
        fields.update(overrides)
        return EvalConfig(models=[str(base), str(echo)], benchmarks=[str(bench)], out=tmp_path / "out", **fields)

    out = tmp_path / "out"
    with pytest.raises(Interrupted):
        evaluate(config(), backend_factory=factory(fail="echo"))
    assert loaded == ["base", "echo"]
    assert outputs_outside_the_cache(out) == {}  # nothing but the cache
    assert [p.name.split(".")[0] for p in (out / ".cache" / "base").glob("*.jsonl")] == ["sums"]
    loaded.clear()
    results = evaluate(config(), backend_factory=factory(fail=None))
    assert loaded == ["echo"]  # base's samples all came from the cache: its model was not even loaded
    check_outputs(out, results, ["base", "echo"], {"sums": 2})
    before = outputs_outside_the_cache(out)
    assert set(before) == {"base/samples.jsonl", "echo/samples.jsonl", "results.json", "results.csv", "table.md"}
    # a later run (more samples) that fails in B: the previous run's outputs are untouched, none of the new ones
    with pytest.raises(Interrupted):
        evaluate(config(k=2), backend_factory=factory(fail="echo"))
    assert outputs_outside_the_cache(out) == before
    assert not [p for p in out.rglob(".*") if p.name != ".cache"]  # no temporary file


def three_benchmarks(root: Path) -> Path:
    """Three files, one benchmark each (so that each can be evaluated alone with the same cache key)."""
    folder = root / "three"
    write(
        folder / "arith.parquet",
        [{"problem": f"Compute {n}.", "answer": str(n), "data_source": "arith"} for n in range(4)],
    )
    write(
        folder / "choice.parquet",
        [{"problem": f"Letter {n}?", "answer": "ABCD"[n], "data_source": "choice"} for n in range(4)],
    )
    write(
        folder / "third.parquet",
        [{"problem": f"Compute {n} + 0.", "answer": str(n), "data_source": "third"} for n in range(3)],
    )
    return folder


def seeded_answer(i, j, request, params):
    """What vLLM's answer depends on: the request (its tokens and seed) and the sample, not its place in the call."""
    return f"<think>\n{len(request['prompt_token_ids'])}\n</think>\n\\boxed{{{(params.seed + j) % 4}}}"


def cache_records(out: Path) -> dict[str, list[dict]]:
    return {
        p.name: sorted(
            (json.loads(line) for line in p.read_text().splitlines()), key=lambda r: (r["problem_index"], r["sample"])
        )
        for p in sorted(out.glob(".cache/*/*.jsonl"))
    }


@pytest.mark.usefixtures("fake_vllm")
def test_vllm_generates_every_benchmark_in_one_call(tmp_path, tiny_lm_dir, monkeypatch):
    """vLLM: one generate call for all benchmarks, each problem with its own k; the cache holds what per-benchmark
    runs give, and so it does when the calls are cut smaller."""
    monkeypatch.setattr(FakeLLM, "max_model_len", 4096)
    monkeypatch.setattr(FakeLLM, "answer", staticmethod(seeded_answer))
    folder = three_benchmarks(tmp_path)
    ks = {"arith": 3, "choice": 1, "third": 2}

    def config(out, benchmarks, names=tuple(ks)):
        return EvalConfig(
            models=[f"m={tiny_lm_dir}"],
            benchmarks=benchmarks,
            out=tmp_path / out,
            backend="vllm",
            k_per_benchmark={name: ks[name] for name in names},
            bootstrap=100,
            show_progress=False,
        )

    evaluate(config("together", [str(folder)]))
    [llm] = FakeLLM.instances
    [(inputs, params)] = llm.calls  # one call for everything
    assert [p.n for p in params] == [3] * 4 + [1] * 4 + [2] * 3
    together = cache_records(tmp_path / "together")
    assert sorted(name.split(".")[0] for name in together) == ["arith", "choice", "third"]
    assert sum(map(len, together.values())) == 4 * 3 + 4 + 3 * 2
    FakeLLM.instances.clear()
    for name in ks:
        evaluate(config("alone", [str(folder / f"{name}.parquet")], [name]))
    assert [len(instance.calls) for instance in FakeLLM.instances] == [1, 1, 1]
    assert cache_records(tmp_path / "alone") == together
    # calls of at most 5 sequences, filled in order (a problem's samples stay together): the same samples
    monkeypatch.setattr(run_module, "_VLLM_CALL_SEQUENCES", 5)
    FakeLLM.instances.clear()
    evaluate(config("small", [str(folder)]))
    sizes = [sum(p.n for p in params) for _, params in FakeLLM.instances[0].calls]
    assert sizes == [3, 3, 3, 5, 4, 4] and cache_records(tmp_path / "small") == together


def test_a_prompt_too_long_is_an_error_naming_its_row_before_any_generation(tmp_path, tiny_lm_dir, qwen_tokenizer):
    models = model_copies(tiny_lm_dir, tmp_path, names=("base",))
    rows = [{"problem": f"Compute {n}." + (" and more" * 80 if n == 2 else ""), "answer": str(n)} for n in range(4)]
    bench = write(tmp_path / "bench" / "long.parquet", rows)
    builder = PromptBuilder(qwen_tokenizer, format_prompt=FORMAT_PROMPT.read_text())
    short, long = (builder.build(rows[n]["problem"]).input_length for n in (0, 2))
    made = []

    def factory(name, model_path, **options):
        backend = Scripted(qwen_tokenizer, SKILLS["base"])
        backend.context = short + 10
        made.append(backend)
        return backend

    assert long > short + 10
    with pytest.raises(EvalError) as error:
        evaluate(
            scripted_config(tmp_path, models, benchmarks=[str(bench)], k_per_benchmark={}, ood=None),
            backend_factory=factory,
        )
    message = str(error.value)
    assert f"{bench} row 2 (benchmark long, problem id 2)" in message
    assert f"a prompt of {long} tokens leaves no room in the model's {short + 10}-token context" in message
    assert made[0].calls == 0 and not (tmp_path / "out").exists()  # checked before anything was generated


def info_benchmarks(*names: str) -> list[Benchmark]:
    from echovl.eval.benchmarks import benchmark_info

    out = []
    for name in names:
        info = benchmark_info(name)
        out.append(
            Benchmark(
                name,
                info.title,
                info.group,
                info.k,
                Path(f"{name}.parquet"),
                [Problem(0, "0", "p", "1", None)],
                1,
                False,
            )
        )
    return out


def test_a_warning_when_the_paper_text_set_is_incomplete(tmp_path, tiny_lm_dir, qwen_tokenizer, capsys):
    nine = ["aime", "aime25", "amc", "math", "minerva", "olympiad_bench", "arc_c", "gpqa", "mmlu_pro"]
    assert paper_set_warnings(info_benchmarks(*nine)) == []
    assert paper_set_warnings(info_benchmarks("geometry3k")) == [] and paper_set_warnings(info_benchmarks("x")) == []
    [warning] = paper_set_warnings(info_benchmarks(*nine[:-1]))
    assert warning.startswith(
        "the paper's text benchmarks MMLU-Pro (data_source mmlu_pro) are missing, so the OOD avg is not"
    )
    assert (
        "python data_prep/openr1_math.py --eval-source path/to/LUFFY/data --out data/openr1_math/benchmarks" in warning
    )
    [warning] = paper_set_warnings(info_benchmarks("aime24", "math"))  # an alias counts as its benchmark
    assert "AIME25 (data_source aime25), AMC" in warning and "AIME24" not in warning.split("missing")[0]
    assert "the ID avg and OOD avg are not the paper's" in warning
    # end to end: on stderr before generation, and in results.json
    rows = [{"problem": f"Compute {n}.", "answer": str(n), "data_source": "math"} for n in range(2)]
    rows += [{"problem": f"Letter {n}?", "answer": "ABCD"[n], "data_source": "arc_c"} for n in range(2)]
    bench = write(tmp_path / "paper" / "part.parquet", rows)
    models = model_copies(tiny_lm_dir, tmp_path, names=("base",))
    results = evaluate(
        scripted_config(tmp_path, models, benchmarks=[str(bench)], k_per_benchmark={}, ood=None),
        backend_factory=scripted_factory(qwen_tokenizer, SKILLS),
    )
    [warning] = results["warnings"]
    assert "AIME24 (data_source aime)" in warning and "MATH-500" not in warning and "ARC-c" not in warning
    assert f"warning: {warning}" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "results.json").read_text())["warnings"] == [warning]
    assert (tmp_path / "out" / "table.md").read_text().endswith(f"\n\nWarning: {warning}\n")  # under the table too


def test_a_hub_model_is_keyed_by_its_commit(tmp_path, qwen_tokenizer, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    commit = {"now": "abc123"}

    def download(repo, filename, **kwargs):
        if commit["now"] is None:
            raise OSError("offline and not cached")
        return str(tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / commit["now"] / filename)

    def snapshot(repo, revision):  # the backend loads the pinned commit's own files
        return str(tmp_path / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / revision)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    made = []
    paths = []

    def factory(name, model_path, **options):
        paths.append(Path(model_path).name)
        return scripted_factory(qwen_tokenizer, {"abc123": SKILLS["echo"], "def456": SKILLS["echo"]}, made=made)(
            name, model_path, **options
        )

    config = scripted_config(tmp_path, ["owner/m"], limit=1)
    evaluate(config, backend_factory=factory)
    [meta] = (tmp_path / "out" / ".cache" / "owner_m").glob("arith.*.json")
    assert json.loads(meta.read_text())["model"] == "hub:owner/m@abc123"
    evaluate(config, backend_factory=factory)
    assert len(made) == 1  # the same commit: everything from the cache
    commit["now"] = "def456"  # the hub repository was updated: a new cache
    evaluate(config, backend_factory=factory)
    assert len(made) == 2 and len(made[1].generated) == 4
    assert paths == ["abc123", "def456"]  # each run generated with the commit it is keyed by
    commit["now"] = None
    with pytest.raises(EvalError, match="owner/m: not found on the hub nor in the local hub cache"):
        evaluate(config, backend_factory=factory)


# ---------------------------------------------------------------------------------------------------- bad input


def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, tiny_lm_dir, capsys):
    bench = text_benchmarks(tmp_path)
    out = tmp_path / "out"

    def run(*args):
        code = main(["--out", str(out), "--no-progress", *args])
        return code, capsys.readouterr().err

    code, err = run("--model", str(tiny_lm_dir), "--benchmarks", str(tmp_path / "nope.parquet"))
    assert code == 1 and "nope.parquet: no such file or folder" in err
    (tmp_path / "notamodel").mkdir()
    code, err = run("--model", str(tmp_path / "notamodel"), "--benchmarks", str(bench))
    assert code == 1 and "is not a model folder" in err
    actor = tmp_path / "ckpt" / "global_step_5" / "actor"
    actor.mkdir(parents=True)
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"x")
    code, err = run("--model", str(actor.parent), "--benchmarks", str(bench))
    assert code == 1 and f"python3 scripts/model_merger.py --local_dir {actor.resolve()}" in err
    code, err = run("--model", str(tiny_lm_dir), "--benchmarks", str(bench), "--k", "typo=3")
    assert code == 1 and "--k names typo" in err
    code, err = run(
        "--model", str(tiny_lm_dir), "--benchmarks", str(bench), "--format-prompt", str(tmp_path / "x.jinja")
    )
    assert code == 1 and "format prompt" in err
    code, err = run("--model", f"a={tiny_lm_dir}", "--model", f"a={tiny_lm_dir}", "--benchmarks", str(bench))
    assert code == 1 and "share a name" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        main(["--model", str(tiny_lm_dir), "--benchmarks", str(bench), "--out", str(out), "--k", "x"])


def parsed_config(*argv: str):
    from echovl.cli import parse_settings
    from echovl.eval.__main__ import build_parser

    config, _ = parse_settings(build_parser(), ["--model", "m", "--benchmarks", "b", "--out", "o", *argv])
    return config


def test_prompt_settings_from_the_training_config(tmp_path):
    yaml_file = tmp_path / "train.yaml"
    yaml_file.write_text(
        f"data:\n  format_prompt: {FORMAT_PROMPT}\n  min_pixels: 1000\n  max_pixels: 2000\n  prompt_key: question\n"
    )
    config = parsed_config("--config", str(yaml_file), "--max-pixels", "3000")
    assert (config.format_prompt, config.min_pixels, config.max_pixels, config.prompt_key) == (
        str(FORMAT_PROMPT),
        1000,
        3000,  # a flag beats the config
        "question",
    )
    assert parsed_config("--format-prompt", "none").format_prompt is None
    assert parsed_config("--config", str(yaml_file), "--format-prompt", "None").format_prompt is None  # a flag wins


def test_prompt_settings_of_the_repository_configs(monkeypatch):
    monkeypatch.chdir(REPO)  # EasyR1 reads the config's relative paths from the repository root
    for name, pixels in (
        ("geo3k_grpo_echo.yaml", (262144, 4194304)),
        ("openr1_math_grpo_echo.yaml", (262144, 4194304)),
    ):
        config = parsed_config("--config", f"configs/{name}")
        assert Path(config.format_prompt).resolve() == FORMAT_PROMPT
        assert (config.min_pixels, config.max_pixels, config.prompt_key, config.image_key) == (
            *pixels,
            "problem",
            "images",
        )


LAUNCH_SCRIPTS = [
    ("eval_openr1_math.sh", "data/openr1_math/benchmarks", "configs/openr1_math_grpo_echo.yaml"),
    ("eval_geo3k.sh", "data/geometry3k/test.parquet", "configs/geo3k_grpo_echo.yaml"),
]


def script_copy(root: Path, recorder_log: Path) -> tuple[Path, dict]:
    """The launch scripts copied into ``root/configs`` (they run from their folder's parent) and an environment
    whose PYTHON records its arguments."""
    import os

    (root / "configs").mkdir(parents=True)
    for name in ("eval_openr1_math.sh", "eval_geo3k.sh", "eval_models.sh"):
        shutil.copy(REPO / "configs" / name, root / "configs" / name)
    recorder = root / "python"
    recorder.write_text(f'#!/usr/bin/env bash\necho "$*" >> {recorder_log}\n')
    recorder.chmod(0o755)
    env = dict(os.environ, PYTHON=str(recorder))
    for var in ("BENCHMARKS", "OUT", "CONFIG"):
        env.pop(var, None)
    return root / "configs", env


@pytest.mark.parametrize("script,benchmarks,config", LAUNCH_SCRIPTS)
def test_launch_scripts(tmp_path, script, benchmarks, config):
    """The scripts' defaults and argument handling, with PYTHON replaced by a recorder: one generation process per
    model, then one run with every model for the table; options after -- go to every run."""
    import subprocess

    log = tmp_path / "calls.txt"
    configs, env = script_copy(tmp_path / "repo", log)
    (tmp_path / "repo" / benchmarks).parent.mkdir(parents=True)
    (tmp_path / "repo" / benchmarks).touch()
    done = subprocess.run(
        ["bash", str(configs / script), "a=m1", "m2", "--", "--limit", "5"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    out = "runs/" + script[:-3]
    common = f"--benchmarks {benchmarks} --out {out} --config {config} --limit 5"
    assert log.read_text().splitlines() == [
        f"-m echovl.eval --model a=m1 {common}",
        f"-m echovl.eval --model m2 {common}",
        f"-m echovl.eval --model a=m1 --model m2 {common}",
    ]
    log.unlink()
    env["OUT"] = str(tmp_path / "elsewhere")
    subprocess.run(["bash", str(configs / script), "only"], env=env, check=True, capture_output=True)
    assert log.read_text().splitlines() == [
        f"-m echovl.eval --model only --benchmarks {benchmarks} --out {tmp_path / 'elsewhere'} --config {config}"
    ]
    usage = subprocess.run(["bash", str(configs / script)], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and f"usage: bash configs/{script} MODEL" in usage.stderr
    log.unlink()  # BENCHMARKS=NAME=PATH, as --benchmarks takes it
    env["BENCHMARKS"] = f"mine={benchmarks}"
    subprocess.run(["bash", str(configs / script), "only"], env=env, check=True, capture_output=True)
    assert log.read_text().splitlines()[0].startswith(f"-m echovl.eval --model only --benchmarks mine={benchmarks} ")


@pytest.mark.parametrize(
    "script,prepare",
    [
        (
            "eval_openr1_math.sh",
            "python data_prep/openr1_math.py --eval-source path/to/LUFFY/data --out data/openr1_math/benchmarks",
        ),
        ("eval_geo3k.sh", "python data_prep/geometry3k.py"),
    ],
)
def test_launch_scripts_without_benchmarks_print_the_data_prep_command(tmp_path, script, prepare):
    """Missing default benchmarks: exit 1 with the data_prep command that writes them (the one docs/data.md gives),
    before any evaluation starts; a missing BENCHMARKS of one's own is named."""
    import subprocess

    log = tmp_path / "calls.txt"
    configs, env = script_copy(tmp_path / "repo", log)
    default = dict((s, b) for s, b, _ in LAUNCH_SCRIPTS)[script]
    assert prepare in (REPO / "docs" / "data.md").read_text()
    done = subprocess.run(["bash", str(configs / script), "m"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and not log.exists()
    assert f"error: the benchmarks {default} do not exist" in done.stderr
    assert f"Write them with:\n    {prepare}\n" in done.stderr
    env["BENCHMARKS"] = "mine/nope"
    done = subprocess.run(["bash", str(configs / script), "m"], env=env, capture_output=True, text=True)
    assert done.returncode == 1 and "error: the benchmarks mine/nope do not exist" in done.stderr
    assert f"the default is written by: {prepare}" in done.stderr and not log.exists()
