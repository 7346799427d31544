"""Prompt context assembly: persona + recent live messages + recalled ones,
deduplicated, within a token budget, as chat messages an LLM runtime sends
as they are (``[{"role": "system"|"user"|"assistant"|"tool", "content": ...}]``).

Pure: the caller (``rolebus.projectors.queries.context``) fetches the role,
its most recent visible messages and the recalled ones; this module decides.

The rule, in order:

1. the system message (persona, then the traits as a list) always comes
   first; if it alone does not fit, ``ContextBudgetError`` says how many
   tokens it needs;
2. recent messages, newest first, while they fit in the budget minus a
   reserve for recall (``recall_share`` of what the persona leaves, only when
   there are recalled messages); recency stops at the first message that
   does not fit, so the recent part is always an unbroken tail of the
   conversation;
3. recalled messages, best first, skipping those already taken, each if it
   fits in what is left (one too big is skipped, a smaller one may follow);
4. the recent tail continues while budget remains;
5. everything taken is put back in conversation order after the system message.

Invariants: ``tokens <= max_tokens`` where ``tokens`` is what ``count``
says (see ``message_tokens``); a message appears at most once (identity:
role id and seq); order is the conversation's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, TypedDict

from rolebus.errors import RolebusError

TokenCounter = Callable[[str], int]
"""Tokens of a text (``rolebus.projectors.tokens.count_tokens`` in production)."""

MESSAGE_OVERHEAD: Final = 4
"""Tokens a chat template adds around each message (role marker, separators),
as OpenAI's and ChatML's templates do."""
REPLY_PRIMING: Final = 3
"""Tokens the template adds to start the model's reply."""


class ContextBudgetError(RolebusError):
    """The token budget cannot even hold the persona."""


class ChatMessage(TypedDict):
    role: str
    content: str


@dataclass(frozen=True)
class Turn:
    """A visible message that may go into the context."""

    role_id: str
    """The role it was appended to (a fork's inherited messages name the source)."""
    seq: int
    order: tuple[int, ...]
    """Conversation order (smaller first); inherited history sorts before a fork's own."""
    author: str
    """user | assistant | system | tool: the chat role it becomes."""
    content: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.role_id, self.seq)


@dataclass(frozen=True)
class Context:
    """The assembled context and what it cost."""

    messages: list[ChatMessage]
    tokens: int
    """Counted with ``count``, overheads included; never above the budget."""
    recent: int
    """How many messages came in as recent ones."""
    recalled: int
    """How many came in only through recall."""


def render_system(persona: str, traits: Mapping[str, str]) -> str:
    """The system message: the persona, then the traits one per line, by key."""
    if not traits:
        return persona
    lines = "\n".join(f"- {key}: {traits[key]}" for key in sorted(traits))
    return f"{persona}\n\nTraits:\n{lines}"


def message_tokens(content: str, count: TokenCounter) -> int:
    return count(content) + MESSAGE_OVERHEAD


def assemble(
    system: str,
    recent: Sequence[Turn],
    recalled: Sequence[Turn],
    *,
    max_tokens: int,
    count: TokenCounter,
    recall_share: float = 0.25,
) -> Context:
    """``recent``: newest first; ``recalled``: best match first (see the module doc)."""
    used = REPLY_PRIMING + message_tokens(system, count)
    if used > max_tokens:
        raise ContextBudgetError(
            f"context: max_tokens={max_tokens} cannot hold the persona, which needs {used} "
            f"tokens with the chat overhead (raise --max-tokens to at least {used})"
        )
    reserve = int((max_tokens - used) * recall_share) if recalled else 0
    taken: dict[tuple[str, int], Turn] = {}
    used, tail = _take_recent(recent, 0, taken, used, max_tokens - reserve, count)
    n_recent = len(taken)
    for turn in recalled:
        cost = message_tokens(turn.content, count)
        if turn.key not in taken and used + cost <= max_tokens:
            taken[turn.key] = turn
            used += cost
    n_recalled = len(taken) - n_recent
    before = len(taken)
    used, _ = _take_recent(recent, tail, taken, used, max_tokens, count)
    ordered = sorted(taken.values(), key=lambda t: t.order)
    messages = [ChatMessage(role="system", content=system)]
    messages += [ChatMessage(role=t.author, content=t.content) for t in ordered]
    return Context(messages, used, n_recent + len(taken) - before, n_recalled)


def _take_recent(
    recent: Sequence[Turn],
    start: int,
    taken: dict[tuple[str, int], Turn],
    used: int,
    limit: int,
    count: TokenCounter,
) -> tuple[int, int]:
    """Take ``recent[start:]`` in order until one does not fit under ``limit``;
    return the tokens used and where the tail stopped."""
    index = start
    for index in range(start, len(recent)):
        turn = recent[index]
        if turn.key in taken:
            continue
        cost = message_tokens(turn.content, count)
        if used + cost > limit:
            return used, index
        taken[turn.key] = turn
        used += cost
    return used, len(recent)
