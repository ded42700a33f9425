"""LUFFY's expert rows as :class:`~echovl.easyr1.luffy.ExpertRollout` builds them on EasyR1 prompt batches (text
and Qwen2.5-VL / Qwen3-VL with images and mrope positions): every tensor of the row, worked out here from the
tokenizer (and, for mrope, from EasyR1's ``get_rope_index`` of the whole sequence), against the row layout of
EasyR1's vLLM rollout (left-padded prompt, right-padded response, positions continued into the padding)."""

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tests.easyr1_stubs import collate_prompts, install_vllm_stub, write_prompt_parquet  # noqa: E402

install_vllm_stub()

from verl.protocol import DataProto  # noqa: E402
from verl.utils import torch_functional as VF  # noqa: E402

from echovl.easyr1.luffy import EXPERT_ROW, ExpertRollout  # noqa: E402

N = 3  # rows per group: 2 rollouts and the expert row
IM_END, END_OF_TEXT = "<|im_end|>", "<|endoftext|>"
SOLUTIONS = (
    "Half of 12 is 6.\n\\boxed{6}",  # shorter than the response width
    "The radius is 3, so the area is 9 pi.\nThe answer is \\boxed{9}.",  # fills the width exactly (with EOS)
    "One and three.\n" * 40 + "\\boxed{4}",  # too long: the group gets an n-th rollout instead
)


def _gen_batch(model_dir, tmp_path, *, images):
    """EasyR1's generation batch (``_make_batch_data``'s pop of the collated batch) and the tokenizer, processor."""
    parquet = write_prompt_parquet(tmp_path / "train.parquet", images=images)
    batch_dict, tokenizer, processor = collate_prompts(model_dir, parquet)
    batch = DataProto.from_single_dict(batch_dict, meta_info={"min_pixels": 28 * 28 * 4, "max_pixels": 28 * 28 * 16})
    gen = batch.pop(
        batch_keys=["input_ids", "attention_mask", "position_ids"],
        non_tensor_batch_keys=["raw_prompt_ids", "multi_modal_data"],
        meta_info_keys=["min_pixels", "max_pixels"],
    )
    return gen, tokenizer, processor


class _FakeVllm:
    """The worker group's ``generate_sequences`` as EasyR1's ``vLLMRollout`` lays out its output: it pops the raw
    prompt ids and images from the input, repeats each prompt ``n`` times (``meta_info["n"]``), right-pads the
    responses and continues the position ids into them. Rollout ``k`` of a prompt is the text ``"r{seed+k}"``."""

    def __init__(self, tokenizer, *, length, stops):
        self.tokenizer = tokenizer
        self.length = length
        self.stops = stops  # the meta_info eos_token_id the workers report (int or list)
        self.eos = stops[0] if isinstance(stops, list) else stops  # what the scripted rollouts end with
        self.calls = []

    def __call__(self, prompts: DataProto) -> DataProto:
        meta = prompts.meta_info
        n, seed = meta.get("n", N), meta.get("seed", 1)
        self.calls.append((len(prompts), meta.get("n"), meta.get("seed")))
        prompts.non_tensor_batch.pop("raw_prompt_ids")
        images = prompts.non_tensor_batch.pop("multi_modal_data", None)
        ids = [self.tokenizer(f"r{seed + k}", add_special_tokens=False)["input_ids"] + [self.eos] for k in range(n)]
        responses = VF.pad_2d_list_to_length(ids * len(prompts), self.tokenizer.pad_token_id, max_length=self.length)
        rows = {
            k: prompts.batch[k].repeat_interleave(n, dim=0) for k in ("input_ids", "attention_mask", "position_ids")
        }
        delta = torch.arange(1, self.length + 1).expand(len(responses), -1)
        if rows["position_ids"].dim() == 3:
            delta = delta.unsqueeze(1).expand(-1, rows["position_ids"].shape[1], -1)
        response_mask = VF.get_response_mask(responses, eos_token_id=self.stops, dtype=rows["attention_mask"].dtype)
        tensors = {
            "prompts": rows["input_ids"],
            "responses": responses,
            "input_ids": torch.cat([rows["input_ids"], responses], dim=-1),
            "attention_mask": torch.cat([rows["attention_mask"], response_mask], dim=-1),
            "response_mask": response_mask,
            "position_ids": torch.cat([rows["position_ids"], rows["position_ids"][..., -1:] + delta], dim=-1),
        }
        non_tensors = {} if images is None else {"multi_modal_data": np.repeat(images, n)}
        meta_info = dict(meta, eos_token_id=self.stops, pad_token_id=self.tokenizer.pad_token_id)
        return DataProto.from_dict(tensors=tensors, non_tensors=non_tensors, meta_info=meta_info)


def _width(tokenizer):
    """The response width: the second solution and its EOS exactly; the first fits, the third does not."""
    lengths = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) + 1 for s in SOLUTIONS]
    assert lengths[0] < lengths[1] < lengths[2]
    return lengths[1]


def _check_groups(out, gen, vllm, *, seed):
    """Group layout: n - 1 rollouts then the expert row; the too-long prompt's group: n rollouts, the last one
    from a second call with n = 1 and seed + n - 1. Returns the expert row of each fitting prompt."""
    assert len(out) == len(gen) * N
    assert vllm.calls == [(len(gen), N - 1, None), (1, 1, seed + N - 1)]
    expert = out.batch[EXPERT_ROW]
    assert expert.tolist() == [False] * (N - 1) + [True] + [False] * (N - 1) + [True] + [False] * N
    for prompt in range(len(gen)):  # every row of a group has its prompt
        rows = slice(prompt * N, (prompt + 1) * N)
        assert (out.batch["prompts"][rows] == gen.batch["input_ids"][prompt]).all()
    extra = out.batch["responses"][3 * N - 1]
    text = vllm.tokenizer(f"r{seed + N - 1}", add_special_tokens=False)["input_ids"] + [vllm.eos]
    assert extra[: len(text)].tolist() == text
    return {0: N - 1, 1: 2 * N - 1}


@pytest.mark.parametrize(
    ("stops", "expected_eos"),
    [
        (IM_END, IM_END),
        ([END_OF_TEXT, IM_END], IM_END),  # the tokenizer's EOS (<|im_end|>) is among the stop tokens: LUFFY's
        (END_OF_TEXT, END_OF_TEXT),  # it is not: the rollout's own stop token, or the mask would run on
    ],
)
def test_expert_rows_of_a_text_batch_are_laid_out_like_vllm_responses(tiny_lm_dir, tmp_path, stops, expected_eos):
    gen, tokenizer, _ = _gen_batch(tiny_lm_dir, tmp_path, images=False)
    assert gen.batch["position_ids"].dim() == 2 and "multi_modal_data" not in gen.non_tensor_batch
    ids = tokenizer.convert_tokens_to_ids
    eos, pad = ids(expected_eos), tokenizer.pad_token_id
    assert tokenizer.eos_token_id == ids(IM_END) and pad == ids(END_OF_TEXT)  # Qwen's: pads with <|endoftext|>
    width = _width(tokenizer)
    stop_ids = [ids(s) for s in stops] if isinstance(stops, list) else ids(stops)
    vllm = _FakeVllm(tokenizer, length=width, stops=stop_ids)
    gen_before = {k: v.clone() for k, v in gen.batch.items()}
    out = ExpertRollout(tokenizer, n=N, seed=7, world_size=1)(vllm, gen, list(SOLUTIONS))
    assert all(torch.equal(gen.batch[k], v) for k, v in gen_before.items())  # the prompts are left as they were
    assert "raw_prompt_ids" in gen.non_tensor_batch  # the rollout popped from a copy

    prompt_width = gen.batch["input_ids"].shape[1]
    for prompt, row in _check_groups(out, gen, vllm, seed=7).items():
        trace = tokenizer(SOLUTIONS[prompt], add_special_tokens=False)["input_ids"] + [eos]
        padding = width - len(trace)
        assert (padding == 0) == (prompt == 1)
        prompt_ids, prompt_mask = gen.batch["input_ids"][prompt], gen.batch["attention_mask"][prompt]
        valid = int(prompt_mask.sum())
        assert prompt_mask.tolist() == [0] * (prompt_width - valid) + [1] * valid  # left-padded
        response = trace + [pad] * padding
        mask = [1] * len(trace) + [0] * padding
        b = out.batch
        assert b["responses"][row].tolist() == response
        assert b["input_ids"][row].tolist() == prompt_ids.tolist() + response
        assert b["attention_mask"][row].tolist() == prompt_mask.tolist() + mask
        assert b["response_mask"][row].tolist() == mask
        # positions: 0 on the left padding, then 0, 1, 2, ... over the prompt, the trace and the right padding
        assert b["position_ids"][row].tolist() == [0] * (prompt_width - valid) + list(range(valid + width))
        # exactly what vLLM's response mask would give for these tokens
        assert VF.get_response_mask(b["responses"][row : row + 1], eos_token_id=stop_ids)[0].tolist() == mask
    assert out.batch["responses"].dtype == out.batch["input_ids"].dtype == torch.long
    assert out.batch["attention_mask"].dtype == out.batch["response_mask"].dtype == gen.batch["attention_mask"].dtype
    assert out.batch["position_ids"].dtype == gen.batch["position_ids"].dtype


@pytest.mark.parametrize("backbone", ["tiny_vl_dir", "tiny_qwen3_vl_dir"])
def test_expert_rows_of_a_vl_batch_carry_the_images_and_mrope_positions(request, tmp_path, backbone):
    """Qwen2.5-VL / Qwen3-VL: the expert row's position ids [4, L] (text row + 3 mrope rows) are EasyR1's
    get_rope_index of the whole prompt + trace + EOS (text tokens after the image advance on every mrope row
    alike), continued by 1 per column into the right padding as vLLM's rollout does; its images are the prompt's."""
    if backbone == "tiny_qwen3_vl_dir":
        from verl.models.transformers.qwen3_vl import get_rope_index
    else:
        from verl.models.transformers.qwen2_vl import get_rope_index
    from verl.utils.dataset import process_image

    gen, tokenizer, processor = _gen_batch(request.getfixturevalue(backbone), tmp_path, images=True)
    positions = gen.batch["position_ids"]
    assert positions.dim() == 3 and positions.shape[1] == 4
    images = gen.non_tensor_batch["multi_modal_data"]
    eos, pad = tokenizer.convert_tokens_to_ids(IM_END), tokenizer.pad_token_id
    width = _width(tokenizer)
    vllm = _FakeVllm(tokenizer, length=width, stops=eos)
    out = ExpertRollout(tokenizer, n=N, seed=1, world_size=1)(vllm, gen, list(SOLUTIONS))
    assert "multi_modal_data" in gen.non_tensor_batch  # the rollout popped from a copy

    prompt_width = gen.batch["input_ids"].shape[1]
    for prompt, row in _check_groups(out, gen, vllm, seed=1).items():
        assert out.non_tensor_batch["multi_modal_data"][row] is images[prompt]
        trace = tokenizer(SOLUTIONS[prompt], add_special_tokens=False)["input_ids"] + [eos]
        padding = width - len(trace)
        valid = int(gen.batch["attention_mask"][prompt].sum())
        assert out.batch["response_mask"][row].tolist() == [1] * len(trace) + [0] * padding
        assert out.batch["responses"][row].tolist() == trace + [pad] * padding
        mask = out.batch["attention_mask"][row].bool()
        assert mask.tolist() == [False] * (prompt_width - valid) + [True] * (valid + len(trace)) + [False] * padding
        sequence = out.batch["input_ids"][row]
        full = sequence[mask]
        assert full.tolist() == gen.batch["input_ids"][prompt][-valid:].tolist() + trace
        image = process_image(images[prompt]["images"][0], 28 * 28 * 4, 28 * 28 * 16)
        grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"]
        vision = get_rope_index(processor, input_ids=full, image_grid_thw=grid, attention_mask=torch.ones_like(full))
        expected = torch.cat([torch.arange(len(full)).unsqueeze(0), vision], dim=0)
        row_positions = out.batch["position_ids"][row]
        assert row_positions.shape == (4, prompt_width + width)
        assert torch.equal(row_positions[:, mask], expected)
        tail = row_positions[:, prompt_width + len(trace) :]  # the right padding: + 1 per column, every row
        last = expected[:, -1:]
        assert torch.equal(tail, last + torch.arange(1, padding + 1)), (prompt, tail, last)
        assert torch.equal(row_positions[:, :prompt_width], positions[prompt])
