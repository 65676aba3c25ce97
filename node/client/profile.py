"""A client profile folder: pinned node keys (trust on first use), the device key, the
saved session and the sync state (pts and per-chat seq) of this device.

Pins are keyed by the node URL's host:port.  A changed key is refused with
NODE_KEY_MISMATCH: silently accepting it is exactly what a man in the middle needs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import platformdirs
from nacl.signing import SigningKey

from ..protocol.errors import ErrorCode, RpcError
from ..protocol.identity import load_or_create_key

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


class Profile:
    def __init__(self, path: Path) -> None:
        self.path = path

    def ensure(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _known(self) -> dict[str, str]:
        try:
            data = json.loads((self.path / KNOWN_NODES).read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            raise RpcError(
                ErrorCode.NODE_KEY_MISMATCH,
                f"{self.path / KNOWN_NODES} is unreadable; fix or remove it",
            ) from None
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def pinned(self, address: str) -> str | None:
        return self._known().get(address)

    def pin(self, address: str, node_fingerprint: str) -> None:
        self.ensure()
        known = self._known()
        known[address] = node_fingerprint
        write_private(self.path / KNOWN_NODES, json.dumps(known, indent=1).encode())

    # --- the signed-in account --------------------------------------------------------
    def device_key(self) -> SigningKey:
        """This profile's device key (created on first use, mode 0600, never sent)."""
        self.ensure()
        return load_or_create_key(self.path / DEVICE_KEY)

    def new_device_key(self) -> SigningKey:
        """Replace the device key (after a logout the old one is revoked for good)."""
        self.ensure()
        (self.path / DEVICE_KEY).unlink(missing_ok=True)
        return load_or_create_key(self.path / DEVICE_KEY)

    def session(self) -> dict[str, object] | None:
        try:
            data = json.loads((self.path / SESSION).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save_session(self, data: dict[str, object]) -> None:
        self.ensure()
        write_private(self.path / SESSION, json.dumps(data, indent=1).encode())

    def clear_session(self) -> None:
        (self.path / SESSION).unlink(missing_ok=True)
        (self.path / SYNC_STATE).unlink(missing_ok=True)

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
        self.ensure()
        write_private(self.path / SYNC_STATE, json.dumps(state).encode())
