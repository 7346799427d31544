"""Token counting with the tokenizer packaged in the wordllama wheel."""

from __future__ import annotations

from rolebus.projectors.tokens import count_tokens


def test_counts_real_tokens_offline() -> None:
    assert count_tokens("") == 0
    assert count_tokens("Hello, my invoice for march is wrong!") == 10
    # Markup-like text is counted as text, no special tokens.
    assert count_tokens("<|im_start|>") > 1


def test_count_is_at_least_one_token_per_word() -> None:
    text = "the quick brown fox jumps over the lazy dog " * 20
    assert count_tokens(text) >= len(text.split())
