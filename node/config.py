"""Node configuration: a TOML file in the data folder, validated against one declared spec.

Every key has a type, a default, bounds and a doc string in ``SPEC``; the README's
configuration reference lists the same table.  Unknown keys and wrong types are errors that
name the file and the key (a typo must never be silently ignored).
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .log import FORMATS, LEVELS
from .ratelimit import DEFAULT_RULES as _RULES

DEFAULT_PORT = 7443
CONFIG_FILE = "config.toml"


class ConfigError(Exception):
    """A problem with configuration or the data folder; str() is one line for the user."""


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    doc: str
    check: Callable[[Any], str | None] | None = None  # returns an error message or None


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def _non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _listen(v: Any) -> str | None:
    try:
        parse_listen(v)
    except ValueError as e:
        return str(e)
    return None


def _name(v: Any) -> str | None:
    ok = 1 <= len(v) <= 63 and all(c.isalnum() or c in "-_." for c in v)
    return None if ok else "must be 1-63 letters, digits, '-', '_' or '.'"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if v in choices else f"must be one of {', '.join(choices)}"

    return check


def _rule(v: Any) -> str | None:
    from .ratelimit import Rule

    try:
        Rule.parse(v)
    except ValueError as e:
        return str(e)
    return None


def _level(v: Any) -> str | None:
    return None if v in LEVELS else f"must be one of {', '.join(LEVELS)}"


def parse_networks(text: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``"127.0.0.0/8, ::1"`` -> networks (a bare address is a /32 or /128)."""
    return [ipaddress.ip_network(p.strip(), strict=False) for p in text.split(",") if p.strip()]


def _networks(v: Any) -> str | None:
    try:
        parse_networks(v)
    except ValueError as e:
        return f"must be comma-separated addresses or CIDR networks ({e})"
    return None


SPEC: dict[str, dict[str, Key]] = {
    "node": {
        "name": Key(str, "fedgram", "Human name of the node (users are name@node).", _name),
        "listen": Key(
            str,
            f"127.0.0.1:{DEFAULT_PORT}",
            "host:port for the WebSocket gateway (port 0 = any free port).",
            _listen,
        ),
        "log_level": Key(
            str, "info", "debug, info, warning or error (changes live on SIGHUP).", _level
        ),
        "log_format": Key(
            str,
            "text",
            "text (key=value lines) or json (one JSON object a line: ts, level, logger, "
            "event, fields).",
            _one_of(*FORMATS),
        ),
        "log_file": Key(
            str,
            "",
            "File the log is appended to (relative to the data folder, or absolute); empty: "
            "stderr (for journald).",
        ),
        "tls_cert": Key(
            str,
            "",
            "PEM certificate chain (relative to the data folder, or absolute): with tls_key "
            "set the gateway speaks wss:// (TLS in the node); empty: plain ws://.",
        ),
        "tls_key": Key(str, "", "PEM private key of tls_cert (keep it mode 0600)."),
    },
    "metrics": {
        "enabled": Key(
            bool,
            True,
            "Answer GET /health and GET /metrics (Prometheus text) over plain HTTP (HTTPS "
            "with TLS) on the gateway's port.",
        ),
        "allow": Key(
            str,
            "127.0.0.0/8, ::1",
            "Comma-separated addresses or networks (CIDR) whose GET /metrics is answered "
            "(others get 403); /health answers everyone. Empty: nobody.",
            _networks,
        ),
    },
    "limits": {
        "frame_max_bytes": Key(int, 1 << 20, "Largest WebSocket message accepted.", _positive),
        "max_sessions": Key(
            int, 20000, "Concurrent sessions before new ones are refused.", _positive
        ),
        "max_inflight": Key(
            int, 64, "Requests in flight per session before TOO_MANY_REQUESTS.", _positive
        ),
        "session_queue": Key(
            int,
            512,
            "Outgoing frames queued per session; beyond it the "
            "session is marked behind and must re-sync.",
            _positive,
        ),
    },
    "timeouts": {
        "handshake": Key(
            float, 10.0, "Seconds a new connection has to finish the handshake.", _positive
        ),
        "idle": Key(
            float, 120.0, "Seconds without any frame or pong before a session is closed.", _positive
        ),
        "ping_interval": Key(float, 30.0, "Seconds between WebSocket pings.", _positive),
    },
    "accounts": {
        "registration": Key(
            str,
            "closed",
            "Who may create accounts: closed (only the admin), "
            "invite (with a token from `fedgram invite create`), open.",
            _one_of("closed", "invite", "open"),
        ),
        "code_delivery": Key(
            str,
            "log",
            "How login codes reach people: log (node log; "
            "`fedgram user code` too), file, command, webhook.",
            _one_of("log", "file", "command", "webhook"),
        ),
        "code_file": Key(str, "", "For delivery=file: file that codes are appended to."),
        "code_command": Key(
            str,
            "",
            "For delivery=command: program run as "
            "`PROGRAM NAME CODE` (plug in SMS, e-mail, a bot).",
        ),
        "code_webhook": Key(
            str,
            "",
            "For delivery=webhook: URL that gets a JSON POST {name, code, node, expires_in}.",
        ),
        "code_delivery_timeout": Key(
            float,
            10.0,
            "Seconds a delivery may take before the request fails with DELIVERY_FAILED.",
            _positive,
        ),
        "code_ttl": Key(int, 300, "Seconds a login code stays valid.", _positive),
        "code_length": Key(
            int,
            6,
            "Digits in a login code (4-12).",
            lambda v: None if 4 <= v <= 12 else "must be 4..12",
        ),
        "code_attempts": Key(int, 5, "Wrong attempts before a code is void.", _positive),
    },
    "ratelimit": {
        name: Key(str, default, f"Rate limit {name.replace('_', ' ')}: N/SECONDS.", _rule)
        for name, default in _RULES.items()
    },
    "chats": {
        "edit_window": Key(
            int, 48 * 3600, "Seconds after sending during which a message can be edited.", _positive
        ),
        "max_group_members": Key(int, 200_000, "Member limit of a group.", _positive),
        "difference_limit": Key(
            int,
            1000,
            "Events per chat that updates.getDifference returns before answering 'too long: "
            "page with chats.history'.",
            _positive,
        ),
    },
    "media": {
        # 960 KiB: the largest round size whose frame fits the default 1 MiB frame limit;
        # media costs ~1-2 ms of CPU per part or chunk beside its bytes (issue 17)
        "part_max_bytes": Key(int, 960 * 1024, "Largest upload part.", _positive),
        "file_max_bytes": Key(int, 2 << 30, "Largest file.", _positive),
        "quota_bytes": Key(
            int, 20 << 30, "Bytes of media a user may have uploaded (0: no quota).", _non_negative
        ),
        "upload_ttl": Key(
            int, 24 * 3600, "Seconds before an unfinished upload expires.", _positive
        ),
        "gc_interval": Key(
            int, 3600, "Seconds between expiry/garbage-collection sweeps.", _positive
        ),
        "download_chunk_max": Key(int, 960 * 1024, "Largest media.download chunk.", _positive),
        "fetch_wait": Key(
            float,
            20.0,
            "Seconds a media.info/media.download of a file this node is still fetching from "
            "another node waits for it before answering MEDIA_FETCHING (retry_after); keep it "
            "under clients' call timeout (30 s in the SDK).",
            _positive,
        ),
    },
    "secret": {
        "ttl": Key(
            int,
            7 * 24 * 3600,
            "Seconds a secret-chat envelope waits for its device's acknowledgement before it "
            "is deleted unread (both devices are told: an `expired` notice).",
            _positive,
        ),
        "queue_max": Key(
            int,
            10_000,
            "Secret-chat messages waiting per device; beyond it secret.send answers "
            "SECRET_QUEUE_FULL.",
            _positive,
        ),
        "relay": Key(
            bool,
            True,
            "Carry secret-chat envelopes (ciphertext) for users of other nodes between two "
            "nodes that have no link of their own.",
        ),
        "relay_max_bytes": Key(
            int,
            1 << 30,
            "Secret-chat bytes relayed per peer per day before further envelopes are refused "
            "(SECRET_RELAY_REFUSED).",
            _positive,
        ),
    },
    "storage": {
        "readers": Key(int, 4, "SQLite read connections.", _positive),
        "batch_max": Key(int, 256, "Most write jobs committed in one transaction.", _positive),
    },
    "federation": {
        "peering": Key(
            str,
            "approve",
            "Who may link to this node: approve (a node that connects first waits for "
            "`fedgram peer approve`), open (any node; for a local dev cluster), off.",
            _one_of("approve", "open", "off"),
        ),
        "public_url": Key(
            str,
            "",
            "ws:// or wss:// URL peers dial to reach this node (empty: from [node] listen, "
            "wss:// when [node] tls_cert is set; set it when behind a proxy or listening on "
            "0.0.0.0).",
        ),
        "tls_ca": Key(
            str,
            "",
            "PEM file of the certificate authorities (or self-signed certificates) trusted "
            "when dialling wss:// peers, besides the system's (relative to the data folder, "
            "or absolute).",
        ),
        "link_timeout": Key(
            float, 10.0, "Seconds a peer has to answer a call on a link.", _positive
        ),
        "retry_max": Key(
            float, 60.0, "Longest wait between attempts to reach a peer that is down.", _positive
        ),
        "discovery": Key(
            bool,
            False,
            "Announce this node on the local network (mDNS, _fedgram._tcp) and list the "
            "nodes seen there (they become peers only when approved, or with peering = open).",
        ),
    },
    "push": {
        "previews": Key(
            bool,
            False,
            "Default for users who did not choose: notifications carry the message's first "
            "characters. Keep it off on a community node (the push distributor sees only "
            "sealed bytes, but a lost phone shows previews on its lock screen).",
        ),
        "max_per_user": Key(int, 10, "Push endpoints an account may register.", _positive),
        "coalesce_quiet": Key(
            float,
            1.5,
            "Seconds without a new message before a chat's pending notification is sent "
            "(a burst is one push).",
            _positive,
        ),
        "coalesce_max": Key(
            float,
            10.0,
            "Seconds after the first message at most before its notification is sent, "
            "however busy the chat.",
            _positive,
        ),
        "timeout": Key(float, 5.0, "Seconds a push endpoint has to answer a POST.", _positive),
        "workers": Key(int, 8, "POSTs in flight at most (the worker pool).", _positive),
        "queue_max": Key(
            int,
            10_000,
            "Notifications waiting for a worker; beyond it they are dropped (counted).",
            _positive,
        ),
        "retries": Key(
            int,
            3,
            "Retries of a notification whose endpoint failed (refused, timeout, 5xx, 429) "
            "before it is dropped.",
            _non_negative,
        ),
        "retry_base": Key(
            float, 2.0, "Seconds before the first retry; doubled for each next one.", _positive
        ),
        "retry_max": Key(float, 60.0, "Longest wait between two retries.", _positive),
        "max_rate": Key(
            float,
            300.0,
            "POSTs per second at most (0: no cap). Pushes share the node's event loop with "
            "sends (~1 ms of CPU each): the cap keeps a flood of notifications from slowing "
            "messages; what waits meanwhile coalesces.",
            _non_negative,
        ),
    },
}


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise ValueError("must be host:port, e.g. 127.0.0.1:7443")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"host {host!r} is not an IP address or 'localhost'") from None
    if not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"port {port_s!r} must be 0..65535")
    return host, int(port_s)


@dataclass
class Config:
    data_dir: Path
    values: dict[str, dict[str, Any]]

    def get(self, section: str, key: str) -> Any:
        return self.values[section][key]

    @property
    def name(self) -> str:
        return str(self.values["node"]["name"])

    @property
    def listen(self) -> tuple[str, int]:
        return parse_listen(self.values["node"]["listen"])

    def path(self, section: str, key: str) -> Path | None:
        """A path-valued key: None when empty, else relative to the data folder."""
        raw = str(self.values[section][key])
        return None if not raw else self.data_dir / Path(raw).expanduser()

    @property
    def tls(self) -> bool:
        return bool(self.values["node"]["tls_cert"])

    @property
    def db_path(self) -> Path:
        return self.data_dir / "fedgram.db"

    @property
    def key_path(self) -> Path:
        return self.data_dir / "node.key"

    @property
    def admin_socket(self) -> Path:
        return self.data_dir / "admin.sock"

    @property
    def media_dir(self) -> Path:
        return self.data_dir / "media"


def defaults() -> dict[str, dict[str, Any]]:
    return {s: {k: key.default for k, key in keys.items()} for s, keys in SPEC.items()}


def validate(raw: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    values = defaults()
    for section, table in raw.items():
        if section not in SPEC:
            raise ConfigError(f"{source}: unknown section [{section}]")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{section}] must be a table")
        for key, val in table.items():
            spec = SPEC[section].get(key)
            where = f"{source}: [{section}] {key}"
            if spec is None:
                raise ConfigError(f"{source}: unknown key [{section}] {key}")
            if spec.type is float and isinstance(val, int) and not isinstance(val, bool):
                val = float(val)
            if not isinstance(val, spec.type) or isinstance(val, bool) != (spec.type is bool):
                raise ConfigError(f"{where}: must be {spec.type.__name__}, got {val!r}")
            if spec.check and (msg := spec.check(val)):
                raise ConfigError(f"{where}: {msg}")
            values[section][key] = val
    _cross_check(values, source)
    return values


def _cross_check(values: dict[str, dict[str, Any]], source: str) -> None:
    node = values["node"]
    if bool(node["tls_cert"]) != bool(node["tls_key"]):
        raise ConfigError(f"{source}: [node] tls_cert and tls_key must be set together")
    acc = values["accounts"]
    kind = acc["code_delivery"]
    if kind != "log" and not acc[f"code_{kind}"]:
        raise ConfigError(f"{source}: [accounts] code_delivery = {kind!r} needs code_{kind}")
    if kind == "webhook" and not acc["code_webhook"].startswith(("http://", "https://")):
        raise ConfigError(f"{source}: [accounts] code_webhook must be an http(s) URL")


def default_data_dir() -> Path:
    env = os.environ.get("FEDGRAM_DATA")
    if env:
        return Path(env)
    return Path(platformdirs.user_data_dir("fedgram", appauthor=False))


def resolve_data_dir(data: Path | None) -> Path:
    return (data if data is not None else default_data_dir()).expanduser().absolute()


def render(values: dict[str, dict[str, Any]]) -> str:
    """TOML text with every key documented, for ``fedgram init``."""
    out = ["# Fedgram node configuration. Every key is optional; shown are the values in use.", ""]
    for section, keys in SPEC.items():
        out.append(f"[{section}]")
        for key, spec in keys.items():
            val = values[section][key]
            out.append(f"# {spec.doc}")
            out.append(f"{key} = {_toml(val)}")
        out.append("")
    return "\n".join(out)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)


def read_raw(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning every failure into one ConfigError line."""
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None


def load(data_dir: Path) -> Config:
    path = data_dir / CONFIG_FILE
    if not path.exists():
        raise ConfigError(f"{path}: no config (run `fedgram init --data {data_dir}`)")
    cfg = Config(data_dir, validate(read_raw(path), str(path)))
    check_node_key(cfg.key_path)
    return cfg


def check_node_key(path: Path) -> None:
    """A node key that exists must be a 32-byte Ed25519 seed (it is made on first start if
    absent): refused here in one line, not deep inside start-up."""
    try:
        size = len(path.read_bytes())
    except FileNotFoundError:
        return
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the node key ({e.strerror})") from None
    if size != 32:
        raise ConfigError(
            f"{path}: damaged node key ({size} bytes, expected 32): restore it from a backup "
            "(moving it away makes a new node identity, which clients that pinned the old "
            "one refuse until they run `fedgram client forget-node URL`)"
        )


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, table in over.items():
        out.setdefault(section, {}).update(table)
    return out


def init_data_dir(
    data_dir: Path, overrides: dict[str, dict[str, Any]] | None = None, *, exist_ok: bool = True
) -> Config:
    """Create the data folder and its config.toml (kept if already there)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = data_dir / CONFIG_FILE
        if path.exists():
            if not exist_ok:
                raise ConfigError(f"{path}: already exists")
            cfg = load(data_dir)
            if overrides:
                raise ConfigError(f"{path}: already exists; edit it instead of passing options")
            return cfg
        values = validate(overrides or {}, "options")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(render(values))
        os.replace(tmp, path)
        (data_dir / "media").mkdir(exist_ok=True)
    except PermissionError as e:
        raise ConfigError(f"{data_dir}: data folder not writable ({e.strerror})") from None
    except OSError as e:
        raise ConfigError(f"{data_dir}: cannot create data folder ({e.strerror})") from None
    return Config(data_dir, values)


def check_writable(data_dir: Path) -> None:
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"{data_dir}: data folder not writable")
