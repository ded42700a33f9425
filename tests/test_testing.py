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


def test_tiny_qwen3_vl_loads_and_generates_with_an_image(tiny_qwen3_vl_dir):
    """Qwen3-VL's own parts: 16-pixel patches (32 x 32 pixels a token), interleaved mrope, deepstack, no system
    message in the chat template, Qwen3's tokenizer."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from echovl.testing import tiny_image

    processor = AutoProcessor.from_pretrained(tiny_qwen3_vl_dir)
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen3_vl_dir)
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor" and processor.image_processor.patch_size == 16
    text, vision = model.config.text_config, model.config.vision_config
    assert text.rope_scaling["mrope_interleaved"] and sum(text.rope_scaling["mrope_section"]) == text.head_dim // 2
    assert len(vision.deepstack_visual_indexes) == len(model.model.visual.deepstack_merger_list) == 2
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Find x."}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert (
        prompt
        == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Find x.<|im_end|>\n<|im_start|>assistant\n"
    )
    inputs = processor(text=[prompt], images=[tiny_image(0, size=(96, 64))], return_tensors="pt")
    image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
    # 64 x 96 pixels: 4 x 6 patches of 16 pixels, merged 2 x 2 into 2 x 3 image tokens
    assert inputs["image_grid_thw"].tolist() == [[1, 4, 6]] and image_tokens == 6
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape[-1] == text.vocab_size == len(processor.tokenizer)


def test_tiny_qwen3_text_model_and_tokenizer(tiny_qwen3_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from echovl.testing import QWEN3_ADDED_TOKENS

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen3_dir)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    for token in QWEN3_ADDED_TOKENS:  # one id each, after the special tokens, not special (as in Qwen3's config)
        (token_id,) = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert token_id > max(tokenizer.all_special_ids) and not tokenizer.added_tokens_decoder[token_id].special
    assert tokenizer.decode(tokenizer("<think>\nx\n</think>")["input_ids"], skip_special_tokens=True) == (
        "<think>\nx\n</think>"
    )
    messages = [{"role": "user", "content": "1 + 1?"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == (
        "<|im_start|>user\n1 + 1?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_thinking = tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=False)
    assert tokenizer.decode(no_thinking).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    ids = torch.tensor([no_thinking])
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
