"""The chat, message and sync methods of the API schema (merged into METHODS by api.py)."""

from __future__ import annotations

from .schema import Method, Update

CHAT_METHODS: list[Method] = []
CHAT_UPDATES: list[Update] = []
