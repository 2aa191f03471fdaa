"""A conversation's branches.

Messages form a tree: each has a parent (None for a first message), and a
parent's id is always lower than its child's (a parent exists before it). A
regenerated answer is a sibling of the answer it replaces, an edited message a
sibling of the message it replaces. A *branch* is a message with all its
ancestors: what a reader sees on screen, and, for a reply, the history its
model is given (less failed and unfinished replies, ``Message.in_history``).
"""

from __future__ import annotations

from collections.abc import Mapping


def ancestry(parent_of: Mapping[int, int | None], message_id: int | None) -> list[int]:
    """``message_id`` and its ancestors, oldest first, from ``parent_of`` (message id ->
    parent id) holding at least them. Empty for None."""
    chain: list[int] = []
    seen: set[int] = set()
    while message_id is not None and message_id not in seen:
        seen.add(message_id)
        chain.append(message_id)
        message_id = parent_of.get(message_id)
    chain.reverse()
    return chain
