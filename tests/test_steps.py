import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echovl.steps import (
    REASONING_MARKERS,
    VISION_TOKENS,
    delimiter_table,
    special_table,
    step_index,
    text_mask,
    vision_table,
)
from tests.reference import step_index_ref


def _ids(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------- delimiter_table on a real byte-level BPE


def test_delimiter_table_marks_newline_merged_with_punctuation(qwen_tokenizer):
    table = delimiter_table(qwen_tokenizer)
    assert table.dtype == torch.bool and table.shape == (len(qwen_tokenizer),)
    text = "Find x.\nThen y)\n\nSo 3 + 4 = 7.\n"
    ids = _ids(qwen_tokenizer, text)
    pieces = [qwen_tokenizer.decode([i]) for i in ids]
    # the tokenizer really merges newlines with punctuation; otherwise this test would prove nothing
    assert ".\n" in pieces and ")\n\n" in pieces
    for token_id, piece in zip(ids, pieces):
        assert bool(table[token_id]) == ("\n" in piece), piece


def test_delimiter_table_ignores_partial_utf8_tokens(qwen_tokenizer):
    """Single-byte tokens of a multi-byte character decode to U+FFFD and are not delimiters."""
    table = delimiter_table(qwen_tokenizer, delimiters=["\n", "。"])
    replacement_only = [
        i for i in range(len(qwen_tokenizer)) if qwen_tokenizer.decode([i]).replace("\ufffd", "") == ""
    ]
    assert len(replacement_only) > 50  # the byte alphabet's 128 non-ASCII bytes, at least
    assert not table[replacement_only].any()
    # "。" is three UTF-8 bytes; its whole-character token is a delimiter, its bytes alone are not
    full = _ids(qwen_tokenizer, "。")
    assert len(full) == 1 and table[full[0]]
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    byte_symbol = bytes_to_unicode()
    for byte in "。".encode():
        token_id = qwen_tokenizer.convert_tokens_to_ids(byte_symbol[byte])
        assert qwen_tokenizer.decode([token_id]) == "\ufffd"
        assert not table[token_id]


def test_delimiter_table_decoded_text_rules():
    """A token that holds a partial character *and* a newline is a delimiter; U+FFFD alone never is."""

    class FakeTokenizer:
        all_special_ids = [4]
        added_tokens_decoder = {}
        texts = ["\ufffd", "\ufffd\n", "a", ".\n\n", "<|im_end|>"]

        def __len__(self):
            return len(self.texts)

        def convert_ids_to_tokens(self, i):
            return self.texts[i]

        def batch_decode(self, ids, **kwargs):
            return [self.texts[i[0]] for i in ids]

    assert delimiter_table(FakeTokenizer()).tolist() == [False, True, False, True, False]
    assert delimiter_table(FakeTokenizer(), ["a", "\n"]).tolist() == [False, True, True, True, False]


def test_delimiter_table_excludes_special_tokens_and_pads_vocab(qwen_tokenizer):
    table = delimiter_table(qwen_tokenizer, vocab_size=len(qwen_tokenizer) + 64)
    assert table.shape == (len(qwen_tokenizer) + 64,)
    assert not table[len(qwen_tokenizer) :].any()
    assert not table[qwen_tokenizer.all_special_ids].any()
    with pytest.raises(ValueError, match="smaller"):
        delimiter_table(qwen_tokenizer, vocab_size=10)


def test_delimiter_table_accepts_a_processor(tiny_vl_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_vl_dir)
    assert torch.equal(delimiter_table(processor), delimiter_table(processor.tokenizer))


# ---------------------------------------------------------------- vision_table / special_table


def test_vision_table_finds_qwen_vision_tokens_by_name(qwen_tokenizer):
    table = vision_table(qwen_tokenizer)
    expected = sorted(qwen_tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS)
    assert table.nonzero().flatten().tolist() == expected
    assert len(expected) == 5


def test_vision_table_is_all_false_for_text_only_tokenizer(text_only_tokenizer):
    table = vision_table(text_only_tokenizer)
    assert table.shape == (len(text_only_tokenizer),)
    assert not table.any()


def test_special_table_covers_vision_and_chat_tokens(qwen_tokenizer):
    table = special_table(qwen_tokenizer)
    for name in ("<|im_end|>", "<|im_start|>", "<|endoftext|>", *VISION_TOKENS):
        assert table[qwen_tokenizer.convert_tokens_to_ids(name)], name
    ids = _ids(qwen_tokenizer, "Find the angle.\n")
    assert not table[ids].any()


def test_text_mask_drops_vision_tokens_and_padding(qwen_tokenizer):
    ids = _ids(qwen_tokenizer, "<|vision_start|><|image_pad|><|vision_end|>Look.\n")
    ids = torch.tensor([ids + [0]])
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    out = text_mask(ids, mask, vision_table(qwen_tokenizer))
    assert out[0].tolist() == [False, False, False] + [True] * (ids.shape[1] - 4) + [False]


# ---------------------------------------------------------------- reasoning markers (<think>, </think>)


def _step_texts(tokenizer, text: str, delimiters=("\n",)) -> tuple[list[str], str]:
    """The decoded text of each step of ``text``, and of its text tokens (the text mask) joined."""
    ids = torch.tensor([_ids(tokenizer, text)])
    mask = torch.ones_like(ids)
    steps = step_index(ids, mask, delimiter_table(tokenizer, delimiters))[0]
    texts = text_mask(ids, mask, special_table(tokenizer))[0]
    step_texts = [tokenizer.decode(ids[0][steps == s].tolist()) for s in range(int(steps.max()) + 1)]
    return step_texts, tokenizer.decode(ids[0][texts].tolist())


def test_qwen3_reasoning_markers_are_single_text_tokens_not_delimiters(qwen3_tokenizer):
    """Qwen3's tokenizer adds <think> / </think> as one non-special token each: text, and no step boundary."""
    marker_ids = [qwen3_tokenizer.convert_tokens_to_ids(m) for m in REASONING_MARKERS]
    for marker, token_id in zip(REASONING_MARKERS, marker_ids):
        assert _ids(qwen3_tokenizer, marker) == [token_id]
        assert qwen3_tokenizer.added_tokens_decoder[token_id].special is False  # as in Qwen3's tokenizer config
    assert not special_table(qwen3_tokenizer)[marker_ids].any()
    assert not delimiter_table(qwen3_tokenizer)[marker_ids].any()
    assert special_table(qwen3_tokenizer)[qwen3_tokenizer.convert_tokens_to_ids("<|im_end|>")]
    # a delimiter named after a marker makes Qwen3's one-token marker a step boundary
    assert delimiter_table(qwen3_tokenizer, ["\n", "</think>"])[marker_ids].tolist() == [False, True]


@pytest.mark.parametrize(
    "text",
    [
        "<think>\nAngle A is 30 degrees.\nSo x = 6.\n</think>\n\\boxed{6}",
        "<think>\nThe radius is 3.\n\nArea is 9 π.\n</think>\n\nThe answer is \\boxed{9}.",
        "<think>Let x be the side.\nThen x = 4.</think>\\boxed{4}",
        "No block here.\nJust <think> in words.\n",
    ],
)
def test_qwen3_and_qwen2_5_tokenizers_give_the_same_steps(qwen_tokenizer, qwen3_tokenizer, text):
    """One marker token (Qwen3) or BPE pieces (Qwen2.5): the same steps and the same text tokens."""
    qwen3_ids = _ids(qwen3_tokenizer, text)
    assert len(qwen3_ids) < len(_ids(qwen_tokenizer, text))  # the tokenizations really differ
    steps, texts = _step_texts(qwen3_tokenizer, text)
    assert (steps, texts) == _step_texts(qwen_tokenizer, text)
    assert "".join(steps) == texts == text


def test_reasoning_markers_stay_text_when_flagged_special(qwen_tokenizer):
    """A tokenizer that registers <think> / </think> as special tokens still counts them as text."""
    import copy

    flagged = copy.deepcopy(qwen_tokenizer)
    flagged.add_special_tokens({"additional_special_tokens": list(REASONING_MARKERS)}, False)
    marker_ids = [flagged.convert_tokens_to_ids(m) for m in REASONING_MARKERS]
    assert set(marker_ids) <= set(flagged.all_special_ids)
    assert not special_table(flagged)[marker_ids].any()
    text = "<think>\nSo x = 6.\n</think>\n\\boxed{6}"
    assert _step_texts(flagged, text) == (["<think>\n", "So x = 6.\n", "</think>\n", "\\boxed{6}"], text)


# ---------------------------------------------------------------- step_index


def _steps(ids, mask, delim):
    return step_index(torch.tensor(ids), torch.tensor(mask), torch.tensor(delim)).tolist()


D = [False, True]  # token 1 is the only delimiter; token 0 is text


def test_step_ends_with_its_delimiter():
    assert _steps([[0, 0, 1, 0, 1, 0]], [[1] * 6], D) == [[0, 0, 0, 1, 1, 2]]


def test_run_of_delimiters_closes_one_step():
    assert _steps([[0, 1, 1, 1, 0, 0]], [[1] * 6], D) == [[0, 0, 0, 0, 1, 1]]


def test_tokens_after_last_delimiter_form_last_step_and_padding_is_minus_one():
    assert _steps([[0, 1, 0, 0, 5, 5]], [[1, 1, 1, 1, 0, 0]], D) == [[0, 0, 1, 1, -1, -1]]


def test_trailing_delimiters_do_not_open_an_empty_step():
    assert _steps([[0, 1, 1]], [[1, 1, 1]], D) == [[0, 0, 0]]


def test_masked_hole_between_delimiters_keeps_the_run():
    # delimiters separated only by a masked position are still consecutive among valid tokens
    assert _steps([[0, 1, 0, 1, 0]], [[1, 1, 0, 1, 1]], D) == [[0, 0, -1, 0, 1]]


def test_empty_rows_and_out_of_table_ids():
    assert _steps([[0, 0], [7, 1]], [[0, 0], [1, 1]], D) == [[-1, -1], [0, 0]]


def test_step_index_rejects_bad_shapes():
    with pytest.raises(ValueError):
        step_index(torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 4), torch.tensor(D))


def test_step_index_on_real_tokenizer(qwen_tokenizer):
    text = "First line.\nSecond line)\n\nThird"
    ids = torch.tensor([_ids(qwen_tokenizer, text)])
    steps = step_index(ids, torch.ones_like(ids), delimiter_table(qwen_tokenizer))[0].tolist()
    texts = {}
    for token_id, step in zip(ids[0].tolist(), steps):
        texts[step] = texts.get(step, "") + qwen_tokenizer.decode([token_id])
    assert texts == {0: "First line.\n", 1: "Second line)\n\n", 2: "Third"}


@st.composite
def step_cases(draw):
    batch = draw(st.integers(1, 6))
    length = draw(st.integers(0, 16))
    vocab = draw(st.integers(1, 6))
    delim = draw(st.lists(st.booleans(), min_size=vocab, max_size=vocab))
    ids = draw(
        st.lists(
            st.lists(st.integers(-1, vocab + 1), min_size=length, max_size=length), min_size=batch, max_size=batch
        )
    )
    mask = draw(
        st.lists(st.lists(st.integers(0, 1), min_size=length, max_size=length), min_size=batch, max_size=batch)
    )
    return ids, mask, delim


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # a busy CI machine
@given(step_cases())
def test_step_index_matches_reference(case):
    ids, mask, delim = case
    expected = step_index_ref(ids, mask, delim)
    got = step_index(
        torch.tensor(ids, dtype=torch.long).reshape(len(ids), -1),
        torch.tensor(mask, dtype=torch.long).reshape(len(ids), -1),
        torch.tensor(delim),
    )
    assert got.dtype == torch.long
    assert got.tolist() == expected


def test_step_spans_of_one_row():
    from echovl.steps import step_spans

    assert step_spans([0, 0, 0, 1, 1, 2, -1, -1]) == [(0, 3), (3, 5), (5, 6)]
    assert step_spans([-1, 0, 0, -1, 0, 1]) == [(1, 5), (5, 6)]  # a masked position inside a step stays inside
    assert step_spans([-1, -1]) == [] and step_spans([]) == []
