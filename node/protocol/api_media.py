"""The media methods of the API schema (merged into METHODS by api.py)."""

from __future__ import annotations

from .schema import Method

MEDIA_METHODS: list[Method] = []
