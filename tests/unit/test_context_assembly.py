"""Context assembly: dedupe, conversation order, and the token budget."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rolebus.projectors.context import (
    MESSAGE_OVERHEAD,
    REPLY_PRIMING,
    ContextBudgetError,
    Turn,
    assemble,
    render_system,
)


def words(text: str) -> int:
    return len(text.split())


def turn(seq: int, content: str, author: str = "user", role: str = "r") -> Turn:
    return Turn(role_id=role, seq=seq, order=(1, seq), author=author, content=content)


def history(n: int) -> list[Turn]:
    return [turn(s, f"message {s}", "user" if s % 2 else "assistant") for s in range(1, n + 1)]


def cost(*contents: str) -> int:
    return sum(words(c) + MESSAGE_OVERHEAD for c in contents)


def test_system_message_renders_traits_by_key() -> None:
    assert render_system("Be kind.", {}) == "Be kind."
    assert render_system("Be kind.", {"b": "2", "a": "1"}) == "Be kind.\n\nTraits:\n- a: 1\n- b: 2"


def test_everything_fits_in_conversation_order() -> None:
    h = history(4)
    ctx = assemble("sys", list(reversed(h)), [], max_tokens=1000, count=words)
    assert ctx.messages[0] == {"role": "system", "content": "sys"}
    assert [m["content"] for m in ctx.messages[1:]] == [t.content for t in h]
    assert [m["role"] for m in ctx.messages[1:]] == ["user", "assistant", "user", "assistant"]
    assert ctx.tokens == REPLY_PRIMING + cost("sys", *(t.content for t in h))


def test_recent_part_is_an_unbroken_tail() -> None:
    h = history(6)
    h[3] = turn(4, "a very long message " * 10)
    budget = REPLY_PRIMING + cost("sys") + cost("message 5", "message 6") + 1
    ctx = assemble("sys", list(reversed(h)), [], max_tokens=budget, count=words)
    assert [m["content"] for m in ctx.messages[1:]] == ["message 5", "message 6"]
    assert ctx.tokens <= budget


def test_recalled_messages_are_deduplicated_and_ordered() -> None:
    h = history(10)
    recalled = [h[9], h[1], h[1], h[4]]  # the newest is also recent; one hit twice
    ctx = assemble("sys", list(reversed(h[6:])), recalled, max_tokens=1000, count=words)
    contents = [m["content"] for m in ctx.messages[1:]]
    assert contents == ["message 2", "message 5", "message 7", "message 8", "message 9",
                        "message 10"]  # fmt: skip
    assert ctx.recalled == 2 and ctx.recent == 4


def test_recall_gets_a_reserve_of_the_budget() -> None:
    h = history(40)
    hit = Turn("r", 0, (0, 0), "user", "the recalled fact")
    budget = 200
    ctx = assemble("sys", list(reversed(h)), [hit], max_tokens=budget, count=words)
    assert ctx.messages[1]["content"] == "the recalled fact"
    assert ctx.tokens <= budget
    assert ctx.recent > 0


def test_persona_too_big_is_a_clear_error() -> None:
    with pytest.raises(ContextBudgetError, match="at least"):
        assemble("one two three four five", [], [], max_tokens=5, count=words)


@given(
    sizes=st.lists(st.integers(0, 40), max_size=30),
    hits=st.lists(st.integers(0, 29), max_size=10),
    budget=st.integers(10, 300),
)
def test_budget_holds_and_nothing_repeats(sizes: list[int], hits: list[int], budget: int) -> None:
    h = [turn(i + 1, f"m{i + 1} " + "w " * n) for i, n in enumerate(sizes)]
    recalled = [h[i] for i in hits if i < len(h)]
    ctx = assemble("s", list(reversed(h)), recalled, max_tokens=budget, count=words)
    assert ctx.tokens <= budget
    real = REPLY_PRIMING + sum(words(m["content"]) + MESSAGE_OVERHEAD for m in ctx.messages)
    assert real == ctx.tokens
    seqs = [int(m["content"].split()[0][1:]) for m in ctx.messages[1:]]
    assert seqs == sorted(set(seqs))  # conversation order, each message once
