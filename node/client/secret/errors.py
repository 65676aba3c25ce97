"""Errors of the secret-chat crypto, each with a stable ``code``.

The codes are what the SDK and the CLI show and test for (``--json`` prints them), so they
never change once published. Every failure to open an envelope is one of these and never a
partially decrypted result: the caller reports it and shows nothing.
"""

from __future__ import annotations


class SecretError(Exception):
    """A secret-chat crypto failure; ``code`` is stable, ``str()`` is one line for a person."""

    code = "SECRET_ERROR"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__doc__ or self.code)


class KeysInvalid(SecretError):
    """A prekey bundle or device key is malformed or its signature does not verify."""

    code = "SECRET_KEYS_INVALID"


class UnknownPrekey(SecretError):
    """A first envelope names a prekey this device no longer (or never) had."""

    code = "SECRET_PREKEY_UNKNOWN"


class Tampered(SecretError):
    """An envelope failed authentication (altered, truncated, malformed or not for us)."""

    code = "SECRET_TAMPERED"


class Replayed(SecretError):
    """An envelope whose message number was already decrypted in this chat."""

    code = "SECRET_REPLAYED"


class OutOfWindow(SecretError):
    """An envelope too far ahead of, or too long after, the messages received so far."""

    code = "SECRET_OUT_OF_WINDOW"


class TooLarge(SecretError):
    """A plaintext bigger than one envelope may carry (send big things as a file)."""

    code = "SECRET_TOO_LARGE"


class StateInvalid(SecretError):
    """A stored session state that cannot be read (damaged, or of another version)."""

    code = "SECRET_STATE_INVALID"


__all__ = [
    "KeysInvalid",
    "OutOfWindow",
    "Replayed",
    "SecretError",
    "StateInvalid",
    "Tampered",
    "TooLarge",
    "UnknownPrekey",
]
