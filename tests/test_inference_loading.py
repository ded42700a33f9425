"""The inference layer's model loading (kinds, device, dtype, context, vision tokens, errors), and its place in the
layers: it imports no command."""

import ast
from pathlib import Path

import pytest
import torch

import echovl
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


COMMANDS = ("eval", "analysis", "demo", "experiments", "data", "easyr1", "trl", "train")


def test_the_inference_layer_imports_no_command():
    """DESIGN.md's layers: commands -> frameworks -> inference -> core; a lower layer never imports a higher one
    (lazy imports inside functions included)."""
    package = Path(echovl.__file__).parent
    found = []
    for path in sorted((package / "inference").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [("." * node.level) + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.lstrip(".").split(".") if name.startswith("..") else name.split(".")[1:]
                if (name.startswith("..") or name.startswith("echovl.")) and parts[0] in COMMANDS:
                    found.append(f"{path.name}: {name}")
    assert found == []
