"""Secret tokens that people paste: invite links to a chat, sign-up invites.

A token is what ``secrets.token_urlsafe`` makes (24 characters of URL-safe base64 for 18
random bytes), except that it never begins with ``-``: pasted after ``fedgram client join``
such a token reads as an option (``No such option: -p``), and one in 64 did. Drawing again
costs nothing and leaves 143 of its 144 bits.
"""

from __future__ import annotations

import secrets

TOKEN_BYTES = 18


def new_token() -> str:
    """A fresh random token that a command line takes as an argument."""
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token
