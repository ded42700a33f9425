"""The tiny offline models load with the Auto classes and run, as the other tests and the demo need."""

import torch


def test_tiny_qwen2_5_vl_loads_and_generates_with_an_image(tiny_vl_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from echovl.testing import tiny_image

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_vl_dir)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.vision_config.out_hidden_size == model.config.text_config.hidden_size
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "<|vision_start|><|image_pad|><|vision_end|>" in prompt
    inputs = processor(text=[prompt], images=[tiny_image(0)], return_tensors="pt")
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    assert image_tokens == inputs["image_grid_thw"].prod().item() // 4 > 0
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == model.config.text_config.vocab_size == len(processor.tokenizer)


def test_tiny_text_model_loads(tiny_lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "1 + 1?"}], add_generation_prompt=True, return_tensors="pt"
    )
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_build_is_deterministic(tmp_path):
    from safetensors.torch import load_file

    from echovl.testing import build_tiny_qwen2

    a = load_file(build_tiny_qwen2(tmp_path / "a") / "model.safetensors")
    b = load_file(build_tiny_qwen2(tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_text() == (tmp_path / "b" / "tokenizer.json").read_text()
