"""Benchmark the dataset converters (run by hand, not collected by pytest).

    python tests/bench/data_prep.py                   # both parts
    python tests/bench/data_prep.py --skip-openr1     # Geometry3K timing only

1. Geometry3K: a synthetic full-size original release (2101 / 300 / 601 problems, one PNG diagram each, sizes
   like the real ones) in a temporary folder, converted with ``convert_geometry3k`` (1 thread and the default
   threads). Baseline in the same run: the plain ``datasets`` recipe (``Dataset.from_generator``, then
   ``to_parquet``) storing the same bytes without decoding them. Target: the conversion takes < 60 s on 2 cores.
2. OpenR1-Math-220k filter: a generated raw file (default 20k problems, 2-4 generations each) filtered with the
   tiny test tokenizer, each run in a fresh process; peak RSS growth over the process after imports (the
   kernel's peak mark is reset first), for two batch sizes and for a quarter of the rows. Baseline: reading the
   whole file into memory (what a non-streaming pass holds). Target: memory grows with the batch size, not with
   the number of rows.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from echovl.testing import build_tiny_tokenizer, tiny_image  # noqa: E402

SPLITS = (("train", 2101), ("val", 300), ("test", 601))


# ------------------------------------------------------------------------------------------------- Geometry3K


def make_release(root: Path, seed: int = 0) -> int:
    """Write the synthetic release; returns its size in bytes."""
    rng = random.Random(seed)
    total, pid = 0, 1
    for split, n in SPLITS:
        for _ in range(n):
            folder = root / split / str(pid)
            folder.mkdir(parents=True)
            choices = [str(rng.randint(1, 200)) for _ in range(4)]
            meta = {
                "problem_text": f"Find x in problem {pid}.",
                "choices": choices,
                "answer": rng.choice("ABCD"),
                "id": pid,
                "annotat_text": f"Find $x$ so that $m \\angle {pid} = {choices[0]}$.",
                "data_type": split,
            }
            (folder / "data.json").write_text(json.dumps(meta, indent=2))
            buf = io.BytesIO()
            tiny_image(pid, size=(rng.randint(150, 650), rng.randint(150, 460))).convert("RGBA").save(buf, "PNG")
            (folder / "img_diagram.png").write_bytes(buf.getvalue())
            total += len(buf.getvalue())
            pid += 1
    return total


def datasets_recipe(release: Path, out: Path, cache: Path) -> None:
    """Baseline: the usual datasets recipe (Dataset.from_generator, then to_parquet), storing the image bytes
    (self-contained like ours) but without decoding them, so a broken image would only fail in training."""
    from datasets import Dataset, Features, Image, List, Value

    features = Features(
        {
            "images": List(Image()),
            "problem": Value("string"),
            "answer": Value("string"),
            "id": Value("int64"),
            "choices": List(Value("string")),
        }
    )

    def rows(split_dir: str):
        for folder in sorted(Path(split_dir).iterdir(), key=lambda p: int(p.name)):
            meta = json.loads((folder / "data.json").read_text())
            image = {"bytes": (folder / "img_diagram.png").read_bytes(), "path": None}
            answer = meta["choices"]["ABCD".index(meta["answer"])]
            yield {"images": [image], "problem": "<image>" + meta["annotat_text"], "answer": answer,
                   "id": meta["id"], "choices": meta["choices"]}  # fmt: skip

    for split, _ in SPLITS:
        ds = Dataset.from_generator(rows, gen_kwargs={"split_dir": str(release / split)}, features=features,
                                    cache_dir=str(cache))  # fmt: skip
        ds.to_parquet(out / f"{split}.parquet")


def bench_geometry3k() -> None:
    from echovl.data.geometry3k import convert_geometry3k

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        image_bytes = make_release(tmp / "release")
        made = time.perf_counter() - start
        start = time.perf_counter()
        convert_geometry3k(str(tmp / "release"), tmp / "out1", workers=1, show_progress=False)
        one_thread = time.perf_counter() - start
        start = time.perf_counter()
        report = convert_geometry3k(str(tmp / "release"), tmp / "out", show_progress=False)
        ours = time.perf_counter() - start
        same = all((tmp / "out" / p.name).read_bytes() == p.read_bytes() for p in (tmp / "out1").iterdir())
        start = time.perf_counter()
        datasets_recipe(tmp / "release", tmp / "baseline", tmp / "cache")
        baseline = time.perf_counter() - start
        sizes = {p.name: p.stat().st_size for p in sorted((tmp / "out").iterdir())}
        baseline_mb = sum(p.stat().st_size for p in (tmp / "baseline").iterdir()) / 2**20
    written = {name: part.written for name, part in report.parts.items()}
    print(f"Geometry3K synthetic release: {sum(n for _, n in SPLITS)} problems, {image_bytes / 2**20:.1f} MB of PNG "
          f"(made in {made:.1f} s)")  # fmt: skip
    print(f"  written {written}, files {', '.join(f'{k} {v / 2**20:.1f} MB' for k, v in sizes.items())}")
    threads = min(8, os.cpu_count() or 1)
    print(f"  convert_geometry3k, {threads} decoding threads: {ours:.2f} s ({sum(written.values()) / ours:.0f} "
          f"problems/s; target < 60 s); 1 thread: {one_thread:.2f} s; same bytes: {same}")  # fmt: skip
    print(f"  datasets recipe (baseline, {baseline_mb:.1f} MB, images not decoded): {baseline:.2f} s; "
          f"ours / baseline = {ours / baseline:.2f}")  # fmt: skip


# -------------------------------------------------------------------------------------------- OpenR1 filter

_WORDS = "the angle triangle side so we have then therefore x y z = + 2 3 5 7 11 \\frac{1}{2} \\boxed{4} . , \n".split(
    " "
)


def make_raw(path: Path, rows: int, seed: int = 0) -> int:
    """A raw OpenR1-Math-220k-layout parquet file (row groups of 256 like hub shards); returns its text bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    pool = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(20, 300))) for _ in range(500)]
    text_bytes = 0
    writer = None
    for start in range(0, rows, 1000):
        batch = []
        for i in range(start, min(rows, start + 1000)):
            n = rng.randint(2, 4)
            gens = ["<think>\n" + "\n".join(rng.choices(pool, k=rng.randint(1, 4))) for _ in range(n)]
            text_bytes += sum(len(g) for g in gens)
            batch.append(
                {
                    "problem": f"Problem {i}: find x.",
                    "solution": "x = 2",
                    "answer": str(i),
                    "uuid": f"{i:08d}",
                    "is_reasoning_complete": [rng.random() < 0.9 for _ in range(n)],
                    "generations": gens,
                    "correctness_math_verify": [rng.random() < 0.7 for _ in range(n)],
                    "correctness_llama": [None] * n,
                    "finish_reasons": ["stop"] * n,
                    "correctness_count": n,
                }
            )
        table = pa.Table.from_pylist(batch)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=256)
    writer.close()
    return text_bytes


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (Linux: clear_refs 5) and return the current RSS in MB. Without the
    reset, the peak would still hold the imports' transient peak and hide what the conversion itself uses."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_mb("VmRSS")


def _child(mode: str, path: str, tokenizer_dir: str, batch_size: int, max_tokens: int, out: str) -> None:
    """Child process: one measured run; prints the peak RSS growth over the process after imports."""
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    from echovl.data.openr1_math import convert_openr1

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    base = _reset_peak()
    start = time.perf_counter()
    if mode == "filter":
        report = convert_openr1(path, out, tokenizer=tokenizer, max_tokens=max_tokens, batch_size=batch_size,
                                show_progress=False)  # fmt: skip
        info = {"read": report.read, "written": report.written, "filtered": dict(report.filtered)}
    else:  # baseline: the whole file in memory as Python rows
        rows = pq.read_table(path).to_pylist()
        info = {"read": len(rows)}
    seconds = time.perf_counter() - start
    print(json.dumps({"extra_mb": _status_mb("VmHWM") - base, "seconds": seconds, **info}))


def _run_child(*args) -> dict:
    code = (
        f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import data_prep; "
        f"data_prep._child(*{list(map(str, args[:3]))!r}, {args[3]}, {args[4]}, {str(args[5])!r})"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_openr1(rows: int, batch_sizes: tuple[int, int], max_tokens: int) -> None:
    import pyarrow.parquet as pq

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_tiny_tokenizer(vision_tokens=False).save_pretrained(tmp / "tok")
        full, quarter = tmp / "raw_full.parquet", tmp / "raw_quarter.parquet"
        text = make_raw(full, rows)
        make_raw(quarter, rows // 4)
        arrow_mb = pq.read_table(full).nbytes / 2**20
        print(f"OpenR1-Math-220k filter: generated raw file of {rows} problems, {text / 2**20:.0f} MB of "
              f"generations ({full.stat().st_size / 2**20:.0f} MB parquet, {arrow_mb:.0f} MB in arrow), "
              f"max_tokens={max_tokens}, tiny tokenizer")  # fmt: skip
        runs = [("whole file in memory (baseline)", "load", full, 0)]
        runs += [(f"streamed filter, batch {b}", "filter", full, b) for b in batch_sizes]
        runs += [(f"streamed filter, batch {batch_sizes[0]}, {rows // 4} rows", "filter", quarter, batch_sizes[0])]
        results = []
        for label, mode, path, batch in runs:
            r = _run_child(mode, path, tmp / "tok", batch, max_tokens, tmp / f"out_{mode}_{batch}_{path.stem}")
            results.append((label, r))
            extra = f", {r['read'] / r['seconds']:.0f} problems/s, written {r['written']}" if mode == "filter" else ""
            print(f"  {label:42} peak +{r['extra_mb']:7.0f} MB  {r['seconds']:6.1f} s{extra}")
        base = results[0][1]["extra_mb"]
        small, large, fewer = (r["extra_mb"] for _, r in results[1:])
        print(f"  streamed / whole-file memory: batch {batch_sizes[0]} {small / base:.3f}, "
              f"batch {batch_sizes[1]} {large / base:.3f}")  # fmt: skip
        print(f"  {rows // 4} vs {rows} rows at batch {batch_sizes[0]}: {fewer:.0f} vs {small:.0f} MB "
              "(memory follows the batch, not the dataset)")  # fmt: skip
        print(f"  filtered: {results[1][1]['filtered']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000, help="problems in the generated raw 220k file")
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=(64, 1024))
    parser.add_argument("--max-tokens", type=int, default=1024)
    parser.add_argument("--skip-geometry3k", action="store_true")
    parser.add_argument("--skip-openr1", action="store_true")
    args = parser.parse_args()
    if not args.skip_geometry3k:
        bench_geometry3k()
    if not args.skip_openr1:
        bench_openr1(args.rows, tuple(args.batch_sizes), args.max_tokens)


if __name__ == "__main__":
    main()
