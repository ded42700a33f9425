"""Tiny offline Qwen models for tests, demos and benchmarks: no hub, no download, built in about a second.

``build_tiny_qwen2_5_vl(dir)`` writes a Qwen2.5-VL (tokenizer, processor, random weights) that loads with
``AutoProcessor.from_pretrained(dir)`` and ``AutoModelForImageTextToText.from_pretrained(dir)``;
``build_tiny_qwen2(dir)`` a text-only Qwen2 causal LM with the same tokenizer. ``build_tiny_qwen3_vl(dir)`` and
``build_tiny_qwen3(dir)`` are the same for Qwen3-VL (16-pixel patches, interleaved mrope, deepstack) and Qwen3
(q/k norms), with Qwen3's tokenizer: the same special tokens plus its added non-special tokens (``<think>``,
``</think>``, ``<tool_call>``, ...: one id each, decoded as their text) and Qwen3's chat templates. The tokenizer
is a real byte-level BPE with Qwen2's pre-tokenizer, trained on a few hundred synthetic reasoning lines, so it
merges newlines with punctuation (``".\\n"``) and splits multi-byte characters like the real one.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

__all__ = [
    "QWEN3_ADDED_TOKENS",
    "QWEN3_CHAT_TEMPLATE",
    "QWEN3_VL_CHAT_TEMPLATE",
    "QWEN_CHAT_TEMPLATE",
    "QWEN_SPECIAL_TOKENS",
    "build_tiny_qwen2",
    "build_tiny_qwen2_5_vl",
    "build_tiny_qwen3",
    "build_tiny_qwen3_vl",
    "build_tiny_tokenizer",
    "synthetic_corpus",
    "tiny_image",
]

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
_TEXT_ONLY_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

# Qwen2's pre-tokenizer split (from its tokenizer.json): punctuation runs keep their trailing newlines.
_QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

_CONTENT_TEMPLATE = (
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}"
)
"""One message's content: a string, or a list of image / video / text parts (Qwen2-VL's vision placeholders)."""

QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n" + _CONTENT_TEMPLATE + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen2.5-VL's chat format: a default system message, vision placeholders for image and video parts."""

QWEN3_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _CONTENT_TEMPLATE + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""Qwen3-VL-Instruct's chat format for plain turns: no default system message (tools left out)."""

QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's (hybrid thinking) chat format for plain text turns: no default system message; the model opens its own
``<think>`` block, and ``enable_thinking=False`` starts the answer with an empty one (tools and the dropping of
earlier turns' reasoning left out)."""

QWEN3_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
"""Tokens Qwen3's tokenizer adds after its special tokens as *non-special* added tokens (``special: false`` in its
tokenizer config): each is one id, matched before the BPE, decoded as its own text and kept by
``skip_special_tokens``."""

_WORDS = (
    "the angle triangle side length area circle radius line point find value of is so we have then "
    "therefore answer let by since and equal sum product square root half twice degrees measure "
    "perimeter parallel perpendicular segment chord tangent diameter hypotenuse x y z a b c m n"
).split()


def synthetic_corpus(num_docs: int = 300, seed: int = 0) -> list[str]:
    """Short multi-line reasoning texts in the shape of math answers (steps end with ``"\\n"``)."""
    rng = random.Random(seed)
    docs = []
    for _ in range(num_docs):
        lines = []
        for _ in range(rng.randint(2, 6)):
            words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 10)))
            a, b = rng.randint(0, 99), rng.randint(1, 99)
            tail = rng.choice(
                [".", ":", ",", ")", "$", f" = {a + b}.", f" is {a}°.", f" √{b}.", " π.", "。", f" ({a}).", "!"]
            )
            lines.append(f"{words.capitalize()} {a} + {b}{tail}")
        body = rng.choice(["\n", "\n\n"]).join(lines)
        answer = rng.randint(0, 999)
        docs.append(f"<think>\n{body}\n</think>\nThe answer is \\boxed{{{answer}}}.\n")
    docs += ["三角形的角。\n直角。\n", "∠ABC = 90°.\n△ABC ≅ △DEF\n", "x² + y² = r²\n"] * 5
    return docs


@functools.lru_cache(maxsize=4)
def _tokenizer_json(vision_tokens: bool, vocab_size: int, qwen3: bool = False) -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(), trainer=trainer)
    specials = QWEN_SPECIAL_TOKENS if vision_tokens else _TEXT_ONLY_SPECIAL_TOKENS
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if qwen3:
        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN3_ADDED_TOKENS])
    return tok.to_str()


def build_tiny_tokenizer(*, vision_tokens: bool = True, vocab_size: int = 1024, qwen3: bool = False):
    """A ``Qwen2TokenizerFast`` with Qwen's special tokens and chat template (vision tokens optional).

    ``qwen3=True``: Qwen3's tokenizer instead: the same special tokens (vision tokens always, as in Qwen3's text
    models), then :data:`QWEN3_ADDED_TOKENS` as non-special added tokens, and :data:`QWEN3_CHAT_TEMPLATE`.
    """
    from tokenizers import Tokenizer
    from transformers import Qwen2TokenizerFast

    vision_tokens = vision_tokens or qwen3
    specials = QWEN_SPECIAL_TOKENS if vision_tokens else _TEXT_ONLY_SPECIAL_TOKENS
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json(vision_tokens, vocab_size, qwen3)),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=[t for t in specials if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        errors="replace",
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE if qwen3 else QWEN_CHAT_TEMPLATE
    return tokenizer


def _special_token_ids(tokenizer) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in _TEXT_ONLY_SPECIAL_TOKENS}


def _text_config(vocab_size: int, token_ids: dict[str, int], hidden_size: int = 64, num_heads: int = 4) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads // 2,
        max_position_embeddings=4096,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=token_ids["<|im_end|>"],
        pad_token_id=token_ids["<|endoftext|>"],
    )


def _save_generation_config(path: Path, token_ids: dict[str, int]) -> None:
    from transformers import GenerationConfig

    GenerationConfig(
        eos_token_id=[token_ids["<|im_end|>"], token_ids["<|endoftext|>"]],
        pad_token_id=token_ids["<|endoftext|>"],
        do_sample=True,
        temperature=1.0,
    ).save_pretrained(path)


def _write_model(path, model_class, config, seed: int, tokenizer, processor=None) -> Path:
    """Random weights from ``seed``, saved with the tokenizer (and processor) and a generation config."""
    import torch

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = model_class(config)
    model.save_pretrained(path, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(path)
    tokenizer.save_pretrained(path)
    _save_generation_config(path, _special_token_ids(tokenizer))
    return path


def _mrope_section(hidden_size: int, num_heads: int, mrope_section, default) -> list[int]:
    """The (temporal, height, width) split of ``head_dim / 2`` rotary frequencies, ``default(half)`` if None."""
    if hidden_size % num_heads or (hidden_size // num_heads) % 2:
        raise ValueError(f"hidden_size {hidden_size} must split into {num_heads} heads of an even size")
    half = hidden_size // num_heads // 2
    section = list(default(half) if mrope_section is None else mrope_section)
    if sum(section) != half:
        raise ValueError(f"mrope_section {section} must sum to head_dim / 2 = {half}")
    return section


def _vision_token_ids(tokenizer) -> dict:
    """The VL configs' token-id fields."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    return dict(
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def build_tiny_qwen2_5_vl(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_heads: int = 4,
    vision_hidden_size: int = 32,
    mrope_section: list[int] | None = None,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 28 * 28 * 16,
) -> Path:
    """Write a tiny random Qwen2.5-VL (2 layers, depth-2 vision tower) with its processor.

    The defaults (hidden 64, 4 heads, a 32-wide vision tower) are the test model; wider settings give a model that
    learns faster (the CPU mini-experiment). ``mrope_section`` (temporal, height, width) must sum to
    ``hidden_size / num_heads / 2``; by default it is split 1 : 1.5 : 1.5 as in the real Qwen2.5-VL.
    Images are resized to between ``min_pixels`` and ``max_pixels`` (28 x 28 pixels make one image token).
    """

    def split(half: int) -> list[int]:
        temporal = half // 4
        return [temporal, (half - temporal) // 2, half - temporal - (half - temporal) // 2]

    mrope_section = _mrope_section(hidden_size, num_heads, mrope_section, split)
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
    )
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tokenizer = build_tiny_tokenizer(vision_tokens=True)
    pixels = dict(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixels),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**pixels),
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    text = _text_config(len(tokenizer), _special_token_ids(tokenizer), hidden_size=hidden_size, num_heads=num_heads)
    text["rope_scaling"] = {"type": "mrope", "rope_type": "default", "mrope_section": mrope_section}
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_heads=2,
            out_hidden_size=text["hidden_size"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[1],
        ),
        **_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return _write_model(path, Qwen2_5_VLForConditionalGeneration, config, seed, tokenizer, processor)


def build_tiny_qwen2(path: str | Path, *, seed: int = 0, vision_tokens: bool = True) -> Path:
    """Write a tiny random text-only Qwen2 causal LM and its tokenizer."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tiny_tokenizer(vision_tokens=vision_tokens)
    config = Qwen2Config(**_text_config(len(tokenizer), _special_token_ids(tokenizer)))
    return _write_model(path, Qwen2ForCausalLM, config, seed, tokenizer)


def build_tiny_qwen3_vl(
    path: str | Path,
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_heads: int = 4,
    vision_hidden_size: int = 32,
    mrope_section: list[int] | None = None,
    deepstack_layers: tuple[int, ...] = (0, 1),
    min_pixels: int = 32 * 32 * 4,
    max_pixels: int = 32 * 32 * 16,
) -> Path:
    """Write a tiny random Qwen3-VL (2 text layers, depth-2 vision tower) with its processor and Qwen3's tokenizer.

    What sets Qwen3-VL apart from Qwen2.5-VL is all there: 16-pixel patches merged 2 x 2 (32 x 32 pixels make one
    image token; images are resized to between ``min_pixels`` and ``max_pixels``), a learned vision position
    embedding interpolated to each grid, *interleaved* mrope (``mrope_section`` (temporal, height, width) sums to
    ``hidden_size / num_heads / 2``; by default split 24 : 20 : 20 as in the real model), and deepstack: the outputs
    of the vision blocks in ``deepstack_layers`` are added to the image tokens' hidden states after the first
    ``len(deepstack_layers)`` text layers. Chat template: :data:`QWEN3_VL_CHAT_TEMPLATE`.

    Needs transformers >= 4.57 (the first with Qwen3-VL); an older one raises ``ImportError`` saying so.
    """
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__).release[:2] < (4, 57):
        raise ImportError(
            f"build_tiny_qwen3_vl needs transformers >= 4.57 (the first release with Qwen3-VL); transformers "
            f"{transformers.__version__} is installed. Upgrade it: pip install 'transformers>=4.57,<5'"
        )

    def split(half: int) -> list[int]:
        spatial = round(half * 20 / 64)
        return [half - 2 * spatial, spatial, spatial]

    mrope_section = _mrope_section(hidden_size, num_heads, mrope_section, split)
    if not deepstack_layers or any(not 0 <= i < 2 for i in deepstack_layers):
        raise ValueError(f"deepstack_layers {deepstack_layers} must be 1 or 2 of the vision blocks 0 and 1")
    from transformers import (
        Qwen2VLImageProcessorFast,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tokenizer = build_tiny_tokenizer(qwen3=True)
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    patches = dict(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessorFast(min_pixels=min_pixels, max_pixels=max_pixels, **patches),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(
            size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, **patches
        ),
        chat_template=QWEN3_VL_CHAT_TEMPLATE,
    )
    text = _text_config(len(tokenizer), _special_token_ids(tokenizer), hidden_size=hidden_size, num_heads=num_heads)
    text.update(
        head_dim=hidden_size // num_heads,
        rope_theta=5000000.0,
        rope_scaling={"rope_type": "default", "mrope_section": mrope_section, "mrope_interleaved": True},
    )
    config = Qwen3VLConfig(
        text_config=text,
        vision_config=dict(
            depth=2,
            hidden_size=vision_hidden_size,
            intermediate_size=2 * vision_hidden_size,
            num_heads=2,
            out_hidden_size=hidden_size,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=256,  # a 16 x 16 table, interpolated to each image's grid
            deepstack_visual_indexes=list(deepstack_layers),
        ),
        **_vision_token_ids(tokenizer),
        tie_word_embeddings=False,
    )
    return _write_model(path, Qwen3VLForConditionalGeneration, config, seed, tokenizer, processor)


def build_tiny_qwen3(path: str | Path, *, seed: int = 0) -> Path:
    """Write a tiny random text-only Qwen3 causal LM (q/k norms, explicit head_dim) with Qwen3's tokenizer and
    :data:`QWEN3_CHAT_TEMPLATE`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_tiny_tokenizer(qwen3=True)
    text = _text_config(len(tokenizer), _special_token_ids(tokenizer))
    config = Qwen3Config(**text, head_dim=text["hidden_size"] // text["num_attention_heads"])
    return _write_model(path, Qwen3ForCausalLM, config, seed, tokenizer)


def tiny_image(seed: int = 0, size: tuple[int, int] = (84, 84)):
    """A small deterministic RGB diagram-like picture (lines and a circle on white)."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    for _ in range(3):
        draw.line([(rng.randrange(w), rng.randrange(h)), (rng.randrange(w), rng.randrange(h))], fill="black", width=2)
    r = rng.randint(8, min(w, h) // 3)
    cx, cy = rng.randint(r, w - r), rng.randint(r, h - r)
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=(rng.randrange(200), 0, 200), width=2)
    return image
