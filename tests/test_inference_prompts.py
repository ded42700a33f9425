"""Prompts are built exactly as in training: the same ids as EasyR1's RLHFDataset for the same row (text, and a
Geometry3K row with its image), without needing EasyR1."""

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from echovl.data.geometry3k import SCHEMA as GEO3K_SCHEMA
from echovl.inference import Prompt, PromptBuilder, resize_image
from echovl.testing import tiny_image

REPO = Path(__file__).resolve().parents[1]
FORMAT_PROMPT = REPO / "configs" / "format_prompt" / "math_think.jinja"
MIN_PIXELS, MAX_PIXELS = 28 * 28 * 4, 28 * 28 * 16


def png(seed, size):
    buffer = io.BytesIO()
    tiny_image(seed, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_resize_image_follows_the_pixel_limits():
    big = resize_image(png(0, (200, 150)), MIN_PIXELS, MAX_PIXELS)  # 30000 pixels > 12544: shrunk
    assert big.size == (129, 96) and big.mode == "RGB"  # sqrt(12544 / 30000) = 0.6466..., sides truncated
    small = resize_image({"bytes": png(1, (30, 40))}, MIN_PIXELS, MAX_PIXELS)  # 1200 < 3136: grown
    assert small.size == (48, 64)
    same = resize_image(tiny_image(2, (84, 84)).convert("L"), MIN_PIXELS, MAX_PIXELS)
    assert same.size == (84, 84) and same.mode == "RGB"
    assert resize_image(png(0, (200, 150)), None, None).size == (200, 150)


def test_messages_split_at_image_placeholders(qwen_tokenizer):
    builder = PromptBuilder(qwen_tokenizer, format_prompt="Q: {{ content }} A:")
    assert builder.messages("x<image>y", multimodal=False) == [{"role": "user", "content": "Q: x<image>y A:"}]
    assert builder.messages("<image>Find x.", multimodal=True) == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "Q: "}, {"type": "image"}, {"type": "text", "text": "Find x. A:"}],
        }
    ]


def test_think_opened_from_the_prompt():
    assert Prompt("<|im_start|>assistant\n<think>\n", ()).think_opened
    assert not Prompt("<|im_start|>assistant\n", ()).think_opened


def write_rows(tmp_path: Path):
    text = tmp_path / "text.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "What is 3 + 4?", "answer": "7"}] * 2), text)
    geo = tmp_path / "geo.parquet"
    rows = [
        {
            "problem": "<image>Find x.",
            "answer": "5",
            "images": [{"bytes": png(0, (200, 150)), "path": None}],
            "id": 1,
            "choices": [],
        },
        {
            "problem": "<image>Find y.",
            "answer": "6",
            "images": [{"bytes": png(1, (30, 40)), "path": None}],
            "id": 2,
            "choices": [],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=GEO3K_SCHEMA), geo)
    return text, geo, rows


@pytest.mark.easyr1
def test_same_ids_as_easyr1_rlhf_dataset(tmp_path, tiny_vl_dir, tiny_lm_dir):
    pytest.importorskip("verl.utils.dataset", reason="EasyR1 (package verl) is not installed")
    from transformers import AutoProcessor, AutoTokenizer
    from verl.utils.dataset import RLHFDataset

    text_file, geo_file, geo_rows = write_rows(tmp_path)
    cases = [
        (tiny_lm_dir, text_file, None, ["What is 3 + 4?"], [None]),
        (tiny_vl_dir, geo_file, "processor", [r["problem"] for r in geo_rows], [r["images"] for r in geo_rows]),
    ]
    for model_dir, file, use_processor, problems, images in cases:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        processor = AutoProcessor.from_pretrained(model_dir) if use_processor else None
        dataset = RLHFDataset(
            str(file),
            tokenizer,
            processor,
            prompt_key="problem",
            answer_key="answer",
            image_key="images",
            max_prompt_length=512,
            format_prompt=str(FORMAT_PROMPT),
            min_pixels=MIN_PIXELS,
            max_pixels=MAX_PIXELS,
            filter_overlong_prompts=False,  # EasyR1's forked filter can hang in a test process (datasets >= 5)
        )
        builder = PromptBuilder(
            tokenizer,
            processor,
            format_prompt=FORMAT_PROMPT.read_text(),
            min_pixels=MIN_PIXELS,
            max_pixels=MAX_PIXELS,
        )
        for i, (problem, row_images) in enumerate(zip(problems, images)):
            item = dataset[i]
            prompt = builder.build(problem, [im["bytes"] for im in row_images] if row_images else None)
            assert list(prompt.token_ids) == list(item["raw_prompt_ids"])  # what EasyR1's vLLM rollout gets
            ours = builder.model_inputs([prompt])
            theirs = item["input_ids"][item["attention_mask"].bool()]
            assert ours["input_ids"][0].tolist() == theirs.tolist()  # what the model sees (images expanded)
            if row_images:
                assert prompt.images[0].size == resize_image(row_images[0]["bytes"], MIN_PIXELS, MAX_PIXELS).size
                assert "<|image_pad|>" in prompt.text and "Work through the problem" in prompt.text


def test_batch_inputs_are_left_padded(tiny_vl_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    builder = PromptBuilder(processor.tokenizer, processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    short = builder.build("<image>x", [png(0, (84, 84))])
    long = builder.build("<image>a much longer question about the figure", [png(1, (84, 84))])
    inputs = builder.model_inputs([short, long])
    mask = inputs["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1 and mask[1].all()
    assert inputs["image_grid_thw"].shape[0] == 2
    alone = builder.model_inputs([short])["input_ids"][0]
    assert inputs["input_ids"][0][mask[0].bool()].tolist() == alone.tolist()
    text = PromptBuilder(processor.tokenizer)
    a, b = text.build("hi"), text.build("a longer question")
    batch = text.model_inputs([a, b])
    assert batch["input_ids"][0, -len(a.token_ids) :].tolist() == list(a.token_ids)
    assert batch["attention_mask"][0].sum() == len(a.token_ids)


def test_continuations_hold_the_prompt_then_exactly_the_prefix_ids(tiny_vl_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    tokenizer = processor.tokenizer
    prefix = tokenizer.encode("<think>\nso x = 2.\n", add_special_tokens=False)
    for builder, problem, images in (
        (
            PromptBuilder(tokenizer, processor, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
            "<image>Find x.",
            [png(0, (84, 84))],
        ),
        (PromptBuilder(tokenizer, format_prompt=FORMAT_PROMPT.read_text()), "Find x.", None),
    ):
        plain = builder.build(problem, images)
        other = builder.build(problem + " Why is that so?", images)
        cont = builder.continuation(plain, prefix)
        assert cont.prefix_ids == tuple(prefix) and cont.text == plain.text + "<think>\nso x = 2.\n"
        assert cont.token_ids == plain.token_ids + tuple(prefix) and cont.chat_text == plain.text
        assert cont.input_length == plain.input_length + len(prefix)
        alone = builder.model_inputs([plain])["input_ids"][0].tolist()
        batch = builder.model_inputs([cont, other])  # in a batch with a longer plain prompt: left padding
        mask = batch["attention_mask"][0].bool()
        assert batch["input_ids"][0][mask].tolist() == alone + prefix
        assert (
            batch["input_ids"][1][batch["attention_mask"][1].bool()].tolist()
            == builder.model_inputs([other])["input_ids"][0].tolist()
        )
        with pytest.raises(Exception, match="continuation already"):
            builder.continuation(cont, prefix)
    # the prefix is part of the response: a prompt that opens <think> stays think-opened, a prefix opening one does not
    think = Prompt("<|im_start|>assistant\n<think>", (1,))
    assert PromptBuilder(tokenizer).continuation(think, prefix).think_opened
    assert not PromptBuilder(tokenizer).continuation(Prompt("<|im_start|>assistant\n", (1,)), prefix).think_opened
