"""A client profile folder: pinned node keys (trust on first use), the device key, the
saved session and the sync state (pts and per-chat seq) of this device.

Pins are keyed by the node URL's host:port.  A changed key is refused with
NODE_KEY_MISMATCH: silently accepting it is exactly what a man in the middle needs; a
legitimate re-key is accepted by forgetting the pin (``fedgram client forget-node URL``).

A folder that cannot be written or a damaged file raises :class:`ProfileError` naming the
file and what to do.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs
from nacl.signing import SigningKey

from ..keyfile import load_or_create_key
from .errors import ProfileError

KNOWN_NODES = "known_nodes.json"
DEVICE_KEY = "device.key"
SYNC_STATE = "sync.json"
SESSION = "session.json"


def default_profile_dir() -> Path:
    env = os.environ.get("FEDGRAM_PROFILE")
    if env:
        return Path(env).expanduser().absolute()
    return Path(platformdirs.user_config_dir("fedgram", appauthor=False)) / "profile"


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by its owner, atomically (temp + fsync + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _unwritable(path: Path, e: OSError) -> ProfileError:
    return ProfileError(
        f"{path}: cannot write the client profile ({e.strerror or e}); check that folder's "
        "permissions, or choose another profile folder (--profile / $FEDGRAM_PROFILE)"
    )


class Profile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        except FileExistsError:
            raise ProfileError(
                f"{self.path}: the client profile must be a folder, not a file; choose "
                "another profile folder (--profile / $FEDGRAM_PROFILE)"
            ) from None
        except OSError as e:
            raise _unwritable(self.path, e) from None

    def _write(self, name: str, data: bytes) -> None:
        self.ensure()
        try:
            write_private(self.path / name, data)
        except OSError as e:
            raise _unwritable(self.path, e) from None

    def _read_json(self, name: str, what_to_do: str) -> Any:
        """A profile file's JSON (None if absent); damaged or unreadable: ProfileError."""
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise ProfileError(
                f"{self.path}: cannot be a client profile folder (a part of the path is a "
                "file); choose another profile folder (--profile / $FEDGRAM_PROFILE)"
            ) from None
        except OSError as e:
            raise ProfileError(f"{path}: cannot read ({e.strerror or e}); {what_to_do}") from None
        except ValueError:
            raise ProfileError(f"{path}: damaged (not JSON); {what_to_do}") from None

    def _known(self) -> dict[str, str]:
        data = self._read_json(
            KNOWN_NODES,
            "fix or remove it (nodes are then pinned again at the next connection)",
        )
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def pinned(self, address: str) -> str | None:
        return self._known().get(address)

    def pin(self, address: str, node_fingerprint: str) -> None:
        known = self._known()
        known[address] = node_fingerprint
        self._write(KNOWN_NODES, json.dumps(known, indent=1).encode())

    def forget(self, address: str) -> str | None:
        """Drop the pinned key of ``address`` (host:port); returns it (None: none pinned).
        The next connection trusts, and pins, whatever key that node then presents."""
        known = self._known()
        old = known.pop(address, None)
        if old is not None:
            self._write(KNOWN_NODES, json.dumps(known, indent=1).encode())
        return old

    # --- the signed-in account --------------------------------------------------------
    def _load_key(self) -> SigningKey:
        path = self.path / DEVICE_KEY
        try:
            return load_or_create_key(path)
        except ValueError:
            raise ProfileError(
                f"{path}: damaged device key (not 32 bytes); this device cannot sign in with "
                "it: run `fedgram client login` again to bind a new one"
            ) from None
        except OSError as e:
            raise ProfileError(
                f"{path}: cannot read or create the device key ({e.strerror or e}); check "
                "the profile folder's permissions"
            ) from None

    def device_key(self) -> SigningKey:
        """This profile's device key (created on first use, mode 0600, never sent)."""
        self.ensure()
        return self._load_key()

    def new_device_key(self) -> SigningKey:
        """Replace the device key (after a logout the old one is revoked for good)."""
        self.ensure()
        try:
            (self.path / DEVICE_KEY).unlink(missing_ok=True)
        except OSError as e:
            raise _unwritable(self.path, e) from None
        return self._load_key()

    def session(self) -> dict[str, object] | None:
        data = self._read_json(SESSION, "log in again with `fedgram client login`")
        if data is None:
            return None
        if not isinstance(data, dict):
            raise ProfileError(
                f"{self.path / SESSION}: damaged; log in again with `fedgram client login`"
            )
        return data

    def save_session(self, data: dict[str, object]) -> None:
        self._write(SESSION, json.dumps(data, indent=1).encode())

    def clear_session(self) -> None:
        try:
            (self.path / SESSION).unlink(missing_ok=True)
            (self.path / SYNC_STATE).unlink(missing_ok=True)
        except OSError as e:
            raise _unwritable(self.path, e) from None

    def sync_state(self) -> dict[str, Any] | None:
        """Where this device's view stands: ``{"pts": int, "chats": {chat_id: seq}}``, the
        arguments of ``updates.getDifference`` (None before the first sync)."""
        try:
            data = json.loads((self.path / SYNC_STATE).read_text())
        except (OSError, ValueError):
            return None
        if (
            not isinstance(data, dict)
            or not isinstance(data.get("pts"), int)
            or not isinstance(data.get("chats"), dict)
        ):
            return None
        return {"pts": data["pts"], "chats": data["chats"]}

    def save_sync_state(self, state: dict[str, Any]) -> None:
        self._write(SYNC_STATE, json.dumps(state).encode())
