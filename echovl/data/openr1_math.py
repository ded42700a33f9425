"""OpenR1-Math 45k (LUFFY's ``Elliott/Openr1-Math-46k-8192``) and LUFFY's benchmarks to EasyR1-ready parquet.

Training data, ``OUT/train.parquet`` with ``problem``, ``answer``, ``solution`` (the expert trace), from either

- a file set in verl/LUFFY format (the hub's ``Elliott/Openr1-Math-46k-8192``, the default, or local parquet):
  ``prompt`` (system + user messages), ``reward_model.ground_truth``, ``target`` (assistant message); or
- the raw ``open-r1/OpenR1-Math-220k`` (config ``default``, 93.7k problems; hub or local parquet), filtered the way
  LUFFY built the 46k set: keep the generations that are both ``correctness_math_verify`` and
  ``is_reasoning_complete``, drop those longer than ``max_tokens`` tokens (``tokenizer(text,
  add_special_tokens=False)``), drop problems with none left, and keep the first remaining one as ``solution``.
  This pass streams: it reads ``batch_size`` rows at a time and tokenizes them in one batch call, and only
  tokenizes a problem's next candidate when the previous one was too long, so memory is bounded by a batch.

Benchmarks (``convert_eval``): verl/LUFFY-format files such as LUFFY's ``valid.parquet`` (AIME24, AMC, MATH-500,
Minerva, OlympiadBench) become ``OUT/<data_source>.parquet`` per source plus ``OUT/all.parquet``, with ``problem``,
``answer`` and ``data_source``, rows in source order. LUFFY keeps duplicated rows on purpose (AIME24 30 x 8, AMC
83 x 4: per-source means are then avg@8 / avg@4); they are kept unless ``dedup=True``. LUFFY's ``data/`` folder
stands for its whole evaluation set (:data:`LUFFY_EVAL_FILES`: ``valid.all.parquet`` with AIME24, AIME25 and AMC
repeated 32 times, MATH-500, Minerva, OlympiadBench; ARC-c, GPQA-diamond and MMLU-Pro, whose answers are letters).
In those (:data:`CHOICE_BENCHMARKS`) every answer is made an option letter: a question whose options are numbered
(22 of LUFFY's 1172 ARC-c rows end in ``1) ...`` to ``4) ...`` with answers ``1``-``4``) gets them relabelled ``A)``
to ``D)`` and its answer the same letter, so that the grader reads it as multiple choice like the others (the count
is a notice of the run); any other answer that is not a letter there is a bad row.

``problem`` is the question alone: the text of the last user message of ``prompt``. LUFFY's instruction lives in
the system message and is dropped (EasyR1 adds its own through ``data.format_prompt``); an instruction that older
LUFFY scripts appended to the user message (:data:`INSTRUCTION_SUFFIXES`) is cut off.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cli import OptionError, option, progress_bar
from .common import (
    EMPTY_ANSWER,
    EMPTY_PROBLEM,
    MALFORMED_ROW,
    ConversionSettings,
    DataError,
    ParquetOutputs,
    PartStats,
    Report,
    SourceRow,
    TableSource,
    cell_text,
    conversion_main,
    is_hub_name,
    open_source,
    table_schema,
)

__all__ = [
    "CHOICE_BENCHMARKS",
    "DEFAULT_EVAL_OUT",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_OUT",
    "DEFAULT_SOURCE",
    "DEFAULT_TOKENIZER",
    "EVAL_SCHEMA",
    "INSTRUCTION_SUFFIXES",
    "LUFFY_EVAL_FILES",
    "OpenR1Settings",
    "TRAIN_SCHEMA",
    "convert_eval",
    "convert_openr1",
    "luffy_eval_files",
    "main",
    "question_text",
]

DEFAULT_SOURCE = "Elliott/Openr1-Math-46k-8192"
DEFAULT_OUT = "data/openr1_math"
DEFAULT_EVAL_OUT = "data/openr1_math/eval"
DEFAULT_TOKENIZER = "Qwen/Qwen2.5-Math-7B"
DEFAULT_MAX_TOKENS = 8192
DEFAULT_BATCH_SIZE = 256
TRAIN_SCHEMA = table_schema({"problem": "string", "answer": "string", "solution": "string"})
EVAL_SCHEMA = table_schema({"problem": "string", "answer": "string", "data_source": "string"})
INSTRUCTION_SUFFIXES = ("Let's think step by step and output the final answer within \\boxed{}.",)
LUFFY_EVAL_FILES = ("valid.all.parquet", "valid.arc_c.parquet", "valid.gpqa.parquet", "valid.mmlu_pro.parquet")
"""LUFFY's evaluation set (its ``data/`` folder): AIME24, AIME25, AMC (each repeated 32 times), MATH-500, Minerva,
OlympiadBench; ARC-c, GPQA-diamond, MMLU-Pro (letter answers)."""

CHOICE_BENCHMARKS = ("arc_c", "gpqa", "mmlu_pro")
"""The multiple-choice benchmarks (``data_source``) of LUFFY's evaluation set: their answers must be option letters."""

RAW_COLUMNS = ["problem", "answer", "generations", "correctness_math_verify", "is_reasoning_complete"]
VERL_COLUMNS = ["prompt", "reward_model", "target", "data_source"]  # target: training only; data_source: eval only

# filter outcomes of the raw 220k pass (expected, never errors) and extra bad-row reasons
NO_VERIFIED = "no generation both math-verified and complete"
TOO_LONG = "every verified generation over --max-tokens"
DUPLICATE = "duplicate (--dedup)"
EMPTY_SOLUTION = "empty solution"
EMPTY_DATA_SOURCE = "empty data_source"
NOT_A_LETTER = "multiple-choice answer is not an option letter"
_ROW_GROUP = 1024


def question_text(prompt: Any) -> str:
    """The question of a verl ``prompt``: the last user message (or the string itself), instruction suffix removed."""
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, (list, tuple)):
        users = [m.get("content") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if not users:
            raise ValueError("prompt has no user message")
        text = users[-1]
        if not isinstance(text, str):
            raise ValueError(f"user message content is {type(text).__name__}, not a string")
    else:
        raise ValueError(f"prompt is {type(prompt).__name__}, expected a list of messages")
    text = text.strip()
    for suffix in INSTRUCTION_SUFFIXES:
        if text.endswith(suffix):
            text = text[: -len(suffix)].rstrip()
    return text


def _ground_truth(reward_model: Any) -> str:
    if isinstance(reward_model, dict):
        return cell_text(reward_model.get("ground_truth"))
    return cell_text(reward_model)


def _solution(target: Any) -> str:
    """The expert trace of a verl ``target``: the first assistant message (or the string itself)."""
    if isinstance(target, dict):
        target = [target]
    if isinstance(target, (list, tuple)):
        for message in target:
            if isinstance(message, dict) and message.get("role", "assistant") == "assistant":
                return cell_text(message.get("content"))
        return ""
    return cell_text(target)


# ------------------------------------------------------------------------------------------------------- sources


def _kind(source: TableSource) -> str:
    """``raw`` (OpenR1-Math-220k) or ``verl`` (LUFFY), from the source's columns."""
    if all(c in source.columns for c in RAW_COLUMNS):
        return "raw"
    if all(c in source.columns for c in ("prompt", "reward_model")):
        return "verl"
    raise DataError(
        f"{source.name}: columns {sorted(source.columns)} are neither the raw OpenR1-Math-220k layout "
        f"({', '.join(RAW_COLUMNS)}) nor the verl/LUFFY layout (prompt, reward_model[, target, data_source])"
    )


# -------------------------------------------------------------------------------------------------- conversions


def _token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Token counts of ``tokenizer(text, add_special_tokens=False)``, one batch call (no offsets, no id lists)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "encode_batch_fast"):
        return [len(e) for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
    ids = tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return [len(x) for x in ids]


def _raw_batch(rows: list[SourceRow], tokenizer, max_tokens: int, part: PartStats) -> list[dict]:
    """LUFFY's filter on one batch of raw OpenR1-Math-220k rows; output rows in input order."""
    candidates: dict[int, tuple[str, str, list[str]]] = {}
    for k, (where, row, _) in enumerate(rows):
        part.read += 1
        problem, answer = cell_text(row.get("problem")), cell_text(row.get("answer"))
        generations, verified, complete = (row.get(c) for c in RAW_COLUMNS[2:])
        if not problem:
            part.skip(where, EMPTY_PROBLEM)
            continue
        if not answer:
            part.skip(where, EMPTY_ANSWER, f"answer is {row.get('answer')!r}")
            continue
        lists = (generations, verified, complete)
        if not all(isinstance(x, list) for x in lists) or len({len(x) for x in lists}) != 1:
            sizes = "/".join(str(len(x)) if isinstance(x, list) else type(x).__name__ for x in lists)
            part.skip(where, MALFORMED_ROW, f"generations/correctness_math_verify/is_reasoning_complete: {sizes}")
            continue
        kept = [g for g, v, c in zip(*lists) if v is True and c is True and isinstance(g, str) and g.strip()]
        if kept:
            candidates[k] = (problem, answer, kept)
        else:
            part.drop(NO_VERIFIED)
    chosen: dict[int, str] = {}
    pending = dict.fromkeys(candidates, 0)  # row -> index of the candidate to measure next
    while pending:
        keys = list(pending)
        lengths = _token_lengths(tokenizer, [candidates[k][2][pending[k]] for k in keys])
        following = {}
        for k, length in zip(keys, lengths):
            if length <= max_tokens:
                chosen[k] = candidates[k][2][pending[k]]
            elif pending[k] + 1 < len(candidates[k][2]):
                following[k] = pending[k] + 1
            else:
                part.drop(TOO_LONG)
        pending = following
    return [{"problem": candidates[k][0], "answer": candidates[k][1], "solution": chosen[k]} for k in sorted(chosen)]


def _verl_row(where: str, row: dict, part: PartStats) -> dict | None:
    part.read += 1
    try:
        problem = question_text(row.get("prompt"))
    except ValueError as exc:
        part.skip(where, MALFORMED_ROW, str(exc))
        return None
    if not problem:
        part.skip(where, EMPTY_PROBLEM)
        return None
    answer = _ground_truth(row.get("reward_model"))
    if not answer:
        part.skip(where, EMPTY_ANSWER, f"reward_model is {row.get('reward_model')!r}")
        return None
    return {"problem": problem, "answer": answer}


def _load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except Exception as exc:
        raise DataError(f"cannot load tokenizer {name_or_path!r}: {type(exc).__name__}: {exc}") from exc


def convert_openr1(
    source: str = DEFAULT_SOURCE,
    out_dir: str | Path = DEFAULT_OUT,
    *,
    tokenizer: Any = DEFAULT_TOKENIZER,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    split: str = "train",
    hub_config: str | None = None,
    strict: bool = False,
    show_progress: bool | None = None,
) -> Report:
    """Write ``out_dir/train.parquet`` (problem, answer, solution) from a verl/LUFFY-format or raw 220k source.

    ``tokenizer`` (a name, a path, or a loaded tokenizer) and ``max_tokens`` only matter for the raw 220k source.
    """
    if batch_size < 1 or max_tokens < 1:
        raise DataError("batch_size and max_tokens must be positive")
    src = open_source(str(source), split=split, config=hub_config)
    kind = _kind(src)
    report = Report(
        f"openr1_math ({src.name}, {'raw OpenR1-Math-220k: filtered' if kind == 'raw' else 'verl format'})", strict
    )
    part = report.part("train")
    if kind == "raw" and isinstance(tokenizer, (str, Path)):
        tokenizer = _load_tokenizer(str(tokenizer))
    wanted = RAW_COLUMNS if kind == "raw" else VERL_COLUMNS
    if kind == "verl" and "target" not in src.columns:
        raise DataError(f"{src.name} has no 'target' column: the training file needs the expert trace (solution)")
    with ParquetOutputs(report) as outputs:
        sink = outputs.parquet(Path(out_dir) / "train.parquet", TRAIN_SCHEMA, row_group_size=_ROW_GROUP)
        bar = progress_bar(total=src.total, desc="openr1_math", unit="problems", enable=show_progress)
        for rows in src.batches(wanted, batch_size):
            if kind == "raw":
                out_rows = _raw_batch(rows, tokenizer, max_tokens, part)
            else:
                out_rows = []
                for where, row, _ in rows:
                    out = _verl_row(where, row, part)
                    if out is None:
                        continue
                    out["solution"] = _solution(row.get("target"))
                    if not out["solution"]:
                        part.skip(where, EMPTY_SOLUTION, f"target is {str(row.get('target'))[:80]!r}")
                        continue
                    out_rows.append(out)
            for out in out_rows:
                sink.add(out)
                part.written += 1
            bar.update(len(rows))
        bar.close()
        if part.written == 0:
            report.notice(f"train.parquet has no rows (all {part.read} rows were skipped or filtered)")
    return report


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_LETTER_ANSWER = re.compile(r"^\(?[A-Z]\)?$")
_NUMBERED_OPTION = re.compile(r"^([0-9]{1,2})\)[ \t]")


def _lettered_options(problem: str, answer: str) -> tuple[str, str] | None:
    """``problem`` and ``answer`` with numbered options made letters, or None when they are not numbered options.

    The question must end in option lines numbered ``1)`` to ``N)`` in order (2 <= N <= 26), as LUFFY's ARC-c writes
    some (``...\\n\\n1) sunlight\\n2) oxygen\\n3) carbon dioxide\\n4) dead organisms``, answer ``4``), and the answer
    must be one of those numbers; the lines become ``A) sunlight`` ... (the layout of the lettered questions) and
    the answer its letter (``D``).
    """
    if not re.fullmatch(r"[0-9]{1,2}", answer):
        return None
    lines = problem.split("\n")
    start = len(lines)
    while start and _NUMBERED_OPTION.match(lines[start - 1]):
        start -= 1
    labels = [_NUMBERED_OPTION.match(line).group(1) for line in lines[start:]]
    if not 2 <= len(labels) <= 26 or [int(label) for label in labels] != list(range(1, len(labels) + 1)):
        return None
    if not 1 <= int(answer) <= len(labels):
        return None
    for i, label in enumerate(labels):  # label i is the number i + 1
        lines[start + i] = chr(ord("A") + i) + lines[start + i][len(label) :]
    return "\n".join(lines), chr(ord("A") + int(answer) - 1)


def luffy_eval_files(folder: Path, report: Report | None = None) -> list[Path] | None:
    """The files of LUFFY's evaluation set in LUFFY's ``data/`` folder (:data:`LUFFY_EVAL_FILES` that exist), or None
    when ``folder`` is not laid out like it (no ``valid.all.parquet``).

    Other parquet files there (``valid.parquet``: the same in-distribution benchmarks with fewer repeats, training
    files) are left out, with a notice in ``report``, as is every file of the set that is missing.
    """
    if not (folder / LUFFY_EVAL_FILES[0]).is_file():
        return None
    files = [folder / name for name in LUFFY_EVAL_FILES if (folder / name).is_file()]
    if report is not None:
        for name in LUFFY_EVAL_FILES:
            if not (folder / name).is_file():
                report.notice(f"{folder / name} is missing: its benchmark is not converted")
        others = sorted(p.name for p in folder.glob("*.parquet") if p.name not in LUFFY_EVAL_FILES)
        if others:
            report.notice(
                f"{folder} is LUFFY's data folder: converting {', '.join(LUFFY_EVAL_FILES)}; not {', '.join(others)}"
            )
    return files


def _eval_sources(sources: Sequence[str], split: str, hub_config: str | None, report: Report) -> list[TableSource]:
    opened = []
    for source in sources:
        files = None
        if not is_hub_name(str(source)) and Path(source).is_dir():
            files = luffy_eval_files(Path(source), report)
        for path in files if files is not None else [source]:
            src = open_source(str(path), split=split, config=hub_config)
            if _kind(src) != "verl" or "data_source" not in src.columns:
                raise DataError(
                    f"{src.name}: benchmark files need the verl/LUFFY columns prompt, reward_model, data_source"
                )
            opened.append(src)
    return opened


def convert_eval(
    source: str | Sequence[str],
    out_dir: str | Path = DEFAULT_EVAL_OUT,
    *,
    dedup: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    split: str = "train",
    hub_config: str | None = None,
    strict: bool = False,
    show_progress: bool | None = None,
) -> Report:
    """Write ``out_dir/<data_source>.parquet`` per benchmark and ``out_dir/all.parquet`` (problem, answer,
    data_source) from verl/LUFFY-format benchmark files.

    ``source`` is one source or several: parquet files, folders (LUFFY's ``data/`` folder stands for its evaluation
    set, :func:`luffy_eval_files`; any other folder is read as one source) or hub names. A ``data_source`` found in
    two sources is an error (they would be mixed into one benchmark).
    """
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    if not sources:
        raise DataError("no benchmark source given")
    report = Report("openr1_math eval", strict)
    opened = _eval_sources(sources, split, hub_config, report)
    report.name = f"openr1_math eval ({', '.join(src.name for src in opened)})"
    out_dir = Path(out_dir)
    seen: set[tuple[str, str, str]] = set()
    file_names: dict[str, str] = {}  # file stem -> data_source
    origin: dict[str, str] = {}  # data_source -> the source it came from
    relabelled: dict[str, int] = {}  # data_source -> rows whose numbered options became letters
    with ParquetOutputs(report) as outputs:
        sinks = {}
        all_sink = outputs.parquet(out_dir / "all.parquet", EVAL_SCHEMA, row_group_size=_ROW_GROUP)
        total = None if any(src.total is None for src in opened) else sum(src.total for src in opened)
        bar = progress_bar(total=total, desc="benchmarks", unit="rows", enable=show_progress)
        for src in opened:
            for rows in src.batches(["prompt", "reward_model", "data_source"], batch_size):
                for where, row, _ in rows:
                    data_source = cell_text(row.get("data_source"))
                    part = report.part(data_source or "(none)")
                    out = _verl_row(where, row, part)
                    if out is None:
                        continue
                    if not data_source:
                        part.skip(where, EMPTY_DATA_SOURCE)
                        continue
                    if data_source in CHOICE_BENCHMARKS and not _LETTER_ANSWER.match(out["answer"]):
                        lettered = _lettered_options(out["problem"], out["answer"])
                        if lettered is None:
                            part.skip(where, NOT_A_LETTER, f"answer {out['answer']!r}")
                            continue
                        out["problem"], out["answer"] = lettered
                        relabelled[data_source] = relabelled.get(data_source, 0) + 1
                    if origin.setdefault(data_source, src.name) != src.name:
                        raise DataError(
                            f"data_source {data_source!r} is in both {origin[data_source]} and {src.name}: "
                            "convert them into different folders"
                        )
                    if dedup:
                        key = (data_source, out["problem"], out["answer"])
                        if key in seen:
                            part.drop(DUPLICATE)
                            continue
                        seen.add(key)
                    if data_source not in sinks:
                        stem = _UNSAFE.sub("_", data_source)
                        if stem == "all" or stem in file_names:
                            other = "all.parquet" if stem == "all" else f"data_source {file_names[stem]!r}"
                            raise DataError(
                                f"data_source {data_source!r} would be written to {stem}.parquet, as {other}"
                            )
                        file_names[stem] = data_source
                        sinks[data_source] = outputs.parquet(out_dir / f"{stem}.parquet", EVAL_SCHEMA, _ROW_GROUP)
                    out["data_source"] = data_source
                    sinks[data_source].add(out)
                    all_sink.add(out)
                    part.written += 1
                bar.update(len(rows))
        bar.close()
        for data_source, count in relabelled.items():
            report.notice(
                f"{data_source}: {count} of {report.part(data_source).read} rows had options numbered 1) 2) ...: "
                "relabelled A) B) ..., and their answers with them (2 -> B)"
            )
        if report.written == 0:
            report.notice(f"{report.name}: no benchmark rows written")
    return report


# ----------------------------------------------------------------------------------------------------------- CLI


@dataclass(kw_only=True)
class OpenR1Settings(ConversionSettings):
    """``python data_prep/openr1_math.py``'s options."""

    source: str | None = option(
        None,
        help=f"training data to convert (default {DEFAULT_SOURCE}): a hub dataset name (streamed, needs internet) "
        "or a local parquet file or folder, in verl/LUFFY format (prompt, reward_model, target) or in the raw "
        "OpenR1-Math-220k layout (problem, answer, generations, correctness_math_verify, is_reasoning_complete; "
        "then the LUFFY filter runs with --tokenizer and --max-tokens). The format is detected from the columns",
    )
    eval_source: list[str] | None = option(
        None,
        metavar="SOURCE",
        help="convert benchmark files instead (verl/LUFFY format with data_source): one or more local parquet "
        "files/folders or hub names. LUFFY's data/valid.parquet holds AIME24, AMC, MATH-500, Minerva, "
        "OlympiadBench (EasyR1's validation during training); LUFFY's data/ folder stands for its whole "
        f"evaluation set ({', '.join(LUFFY_EVAL_FILES)}: the same plus AIME25, ARC-c, GPQA-diamond, MMLU-Pro), "
        "for python -m echovl.eval. A data_source found in two sources is an error",
    )
    out: str | None = option(
        None, help=f"output folder (default {DEFAULT_OUT}, or {DEFAULT_EVAL_OUT} with --eval-source)"
    )
    tokenizer: str = option(
        DEFAULT_TOKENIZER,
        help="raw 220k source only: tokenizer (hub name or local folder) that measures generation length",
    )
    max_tokens: int = option(
        DEFAULT_MAX_TOKENS,
        help="raw 220k source only: drop generations longer than this many tokens (no special tokens added)",
    )
    batch_size: int = option(
        DEFAULT_BATCH_SIZE, help="rows read and tokenized at a time; memory grows with it, not with the dataset"
    )
    split: str = option("train", help="split to read from a hub source")
    hub_config: str | None = option(None, help="config of a hub source (default: the dataset's default)")
    dedup: bool = option(
        False,
        help="with --eval-source: drop repeated (data_source, problem, answer) rows. LUFFY repeats AIME24 8x and "
        "AMC 4x on purpose (avg@8 / avg@4), so they are kept by default",
    )

    def __post_init__(self) -> None:
        if self.source is not None and self.eval_source is not None:
            raise OptionError("argument --eval-source: not allowed with argument --source")
        if self.dedup and self.eval_source is None:
            raise OptionError("--dedup only applies with --eval-source")


def _convert(s: OpenR1Settings) -> Report:
    common = dict(batch_size=s.batch_size, split=s.split, hub_config=s.hub_config, strict=s.strict)
    if s.eval_source is not None:
        out = s.out or DEFAULT_EVAL_OUT
        return convert_eval(s.eval_source, out, dedup=s.dedup, show_progress=s.show_progress, **common)
    out = s.out or DEFAULT_OUT
    source = s.source or DEFAULT_SOURCE
    return convert_openr1(
        source, out, tokenizer=s.tokenizer, max_tokens=s.max_tokens, show_progress=s.show_progress, **common
    )


def main(argv: list[str] | None = None) -> int:
    return conversion_main(
        OpenR1Settings,
        _convert,
        argv,
        prog="python data_prep/openr1_math.py",
        description=(
            "Convert OpenR1-Math 45k (LUFFY's Elliott/Openr1-Math-46k-8192, or the raw open-r1/OpenR1-Math-220k "
            "filtered the same way) into OUT/train.parquet with columns problem, answer and solution (the expert "
            "trace), text only; or, with --eval-source, verl/LUFFY-format benchmark files into "
            "OUT/<data_source>.parquet and OUT/all.parquet with problem, answer and data_source. problem is the "
            "question alone (the last user message; LUFFY's system prompt is dropped). Use them with EasyR1's "
            "RLHFDataset: data.prompt_key=problem data.answer_key=answer, data.train_files=OUT/train.parquet, "
            "data.val_files=OUT/eval/all.parquet (a file: the eval folder holds several files of one split). A bad "
            "row is an empty problem, answer, solution or data_source, a malformed prompt or generation lists "
            "(rows that the 220k filter removes are counted as filtered, never an error)."
        ),
    )
