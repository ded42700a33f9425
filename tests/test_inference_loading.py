"""The inference layer's model loading (kinds, device, dtype, context, vision tokens, errors); its place in the
layers is checked in tests/test_layers.py."""

import pytest
import torch

from echovl.inference import InferenceError, load_model

VISION = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def test_load_model_kinds(tiny_vl_dir, tiny_lm_dir):
    vl = load_model(tiny_vl_dir, device="cpu")
    assert vl.is_vlm and vl.path == str(tiny_vl_dir) and not vl.model.training
    assert vl.device.type == "cpu" and next(vl.model.parameters()).dtype == torch.float32
    assert vl.context == vl.model.config.text_config.max_position_embeddings
    assert sorted(vl.vision_ids()) == sorted(vl.tokenizer.convert_tokens_to_ids(t) for t in VISION)
    assert vl.delimiter_table(["\n"]) is vl.delimiter_table(("\n",))  # made once
    text = load_model(tiny_lm_dir, device="cpu")
    assert not text.is_vlm and text.processor is None and text.vision_ids() == []
    assert text.tokenizer.convert_tokens_to_ids("<|image_pad|>") != text.tokenizer.unk_token_id  # it has them
    assert text.context == text.model.config.max_position_embeddings


def test_load_model_errors(tmp_path):
    with pytest.raises(InferenceError, match=f"cannot load the tokenizer/processor of {tmp_path}"):
        load_model(tmp_path)
    assert issubclass(InferenceError, ValueError)
