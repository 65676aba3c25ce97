"""Token-bucket rate limits keyed per IP, per user, per device and per login name.

Each method belongs to a rate group (declared in the API schema); a group names the rules
that apply and what each is keyed by.  A refused call answers FLOOD_WAIT with the seconds
until a token is back, like Telegram's FLOOD_WAIT_X, and is not evaluated at all — which
is what makes guessing login codes hopeless rather than merely slow.

Memory is bounded without ever handing a budget back early: a refused call stores nothing;
a bucket that has refilled is the same as no bucket and is dropped (soonest first); and
nothing else is ever dropped.  Each rule keeps at most ``MAX_BUCKETS`` partly spent buckets,
so a flood of one kind of key (junk login names, many IPs) cannot crowd out another; when a
rule's table is full, a call that would need a new bucket there is refused (FLOOD_WAIT until
the soonest bucket refills) instead of evicting anyone's spent budget.
"""

from __future__ import annotations

import heapq
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import log
from .protocol.errors import ErrorCode, RpcError

MAX_BUCKETS = 200_000  # partly spent buckets kept per rule; more wait (fail closed)
# A refused caller is logged (security.flood_wait) once per group, key kind and IP per this
# many seconds: a flood must not become a flood of log lines.
FLOOD_LOG_EVERY = 60.0
FLOOD_LOG_KEYS = 10_000  # remembered (group, kind, ip) before the memory is cleared


@dataclass(frozen=True)
class Rule:
    count: int  # tokens (burst) ...
    period: float  # ... refilled evenly over this many seconds

    @classmethod
    def parse(cls, text: str) -> Rule:
        """ "N/SECONDS", e.g. "5/300" = 5 calls per 5 minutes (bursting to 5)."""
        n, sep, secs = text.partition("/")
        try:
            rule = cls(int(n), float(secs))
        except ValueError:
            raise ValueError(f"{text!r} must be N/SECONDS, e.g. 5/300") from None
        if not sep or rule.count < 1 or rule.period <= 0:
            raise ValueError(f"{text!r} must be N/SECONDS with N >= 1 and SECONDS > 0")
        return rule


# group -> [(key kind, config key of the rule)]
GROUPS: dict[str, list[tuple[str, str]]] = {
    "system": [("ip", "system_per_ip")],
    "auth.code": [("name", "code_per_name"), ("ip", "code_per_ip")],
    "auth.signin": [("name", "signin_per_name"), ("ip", "signin_per_ip")],
    "auth.signup": [("ip", "signup_per_ip")],
    "auth.authorize": [("ip", "authorize_per_ip")],
    "typing": [("device", "typing_per_device")],
    "media": [("device", "media_per_device")],
    "lookup": [("device", "lookups_per_device"), ("user", "calls_per_user")],
    "federation": [("peer", "calls_per_peer")],
    "default": [("device", "calls_per_device"), ("user", "calls_per_user")],
}

DEFAULT_RULES: dict[str, str] = {
    "system_per_ip": "2000/10",
    "code_per_name": "5/3600",
    "code_per_ip": "30/3600",
    "signin_per_name": "10/600",
    "signin_per_ip": "30/600",
    "signup_per_ip": "10/3600",
    "authorize_per_ip": "300/60",
    "calls_per_device": "3000/10",
    "calls_per_user": "6000/10",
    "typing_per_device": "60/60",
    "media_per_device": "20000/10",
    "lookups_per_device": "300/60",
    "calls_per_peer": "100000/10",
}


class _Bucket:
    __slots__ = ("full_at", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.full_at = stamp


class _Table:
    """The partly spent buckets of one rule, with a heap of when each is full again (stale
    entries, left by a bucket spent again since, are skipped and compacted away)."""

    __slots__ = ("bound", "buckets", "heap", "rule")

    def __init__(self, rule: Rule, bound: int) -> None:
        self.rule = rule
        self.bound = bound
        self.buckets: dict[str, _Bucket] = {}
        self.heap: list[tuple[float, str]] = []

    def drop_full(self, now: float) -> None:
        heap, buckets = self.heap, self.buckets
        while heap and heap[0][0] <= now:
            full_at, key = heapq.heappop(heap)
            b = buckets.get(key)
            if b is not None and b.full_at == full_at:
                del buckets[key]

    def tokens(self, b: _Bucket, now: float) -> float:
        r = self.rule
        return min(float(r.count), b.tokens + (now - b.stamp) * r.count / r.period)

    def wait(self, key: str, now: float) -> float:
        """Seconds until a call keyed ``key`` may take a token here (0: now)."""
        b = self.buckets.get(key)
        if b is None:
            if len(self.buckets) < self.bound:
                return 0.0
            # full of spent buckets: wait until the soonest of them refills
            return self.heap[0][0] - now if self.heap else 1.0
        tokens = self.tokens(b, now)
        return 0.0 if tokens >= 1 else (1 - tokens) * self.rule.period / self.rule.count

    def take(self, key: str, now: float) -> None:
        r = self.rule
        b = self.buckets.get(key)
        if b is None:
            b = self.buckets[key] = _Bucket(float(r.count), now)
        b.tokens = self.tokens(b, now) - 1
        b.stamp = now
        b.full_at = now + (r.count - b.tokens) * r.period / r.count
        heapq.heappush(self.heap, (b.full_at, key))
        if len(self.heap) > 2 * len(self.buckets) + 1024:
            self.heap = [(x.full_at, k) for k, x in self.buckets.items()]
            heapq.heapify(self.heap)


class RateLimiter:
    def __init__(
        self,
        rules: dict[str, Rule],
        clock: Callable[[], float] = time.monotonic,
        max_buckets: int | None = None,
    ):
        self.rules = rules
        self._clock = clock
        bound = MAX_BUCKETS if max_buckets is None else max_buckets
        self._tables = {name: _Table(rule, bound) for name, rule in rules.items()}
        self._flood_logged: dict[tuple[str, str, str], float] = {}

    def update(self, rules: dict[str, Rule]) -> None:
        """New rules (config reload). A changed rule keeps what each caller has spent, so
        a reload hands no spent budget back: a bucket that had spent S tokens has
        ``new burst - S`` (at least 0), and its "full again" time is recomputed under the
        new rate."""
        now = self._clock()
        for name, rule in rules.items():
            table = self._tables.get(name)
            if table is None:
                self._tables[name] = _Table(rule, MAX_BUCKETS)
                continue
            if table.rule == rule:
                continue
            for b in table.buckets.values():
                spent = table.rule.count - table.tokens(b, now)
                b.tokens = max(0.0, rule.count - spent)
                b.stamp = now
            table.rule = rule
            for b in table.buckets.values():
                b.full_at = now + (rule.count - b.tokens) * rule.period / rule.count
            table.heap = [(b.full_at, k) for k, b in table.buckets.items()]
            heapq.heapify(table.heap)
        self.rules = dict(rules)

    @property
    def size(self) -> int:
        """Buckets held (all partly spent)."""
        return sum(len(t.buckets) for t in self._tables.values())

    def check(self, group: str, keys: dict[str, str | None]) -> None:
        """Take one token from every applicable bucket, or raise FLOOD_WAIT taking none and
        storing nothing."""
        now = self._clock()
        picked: list[tuple[_Table, str]] = []
        wait = 0.0
        refused_by = ""
        for kind, rule_name in GROUPS.get(group, GROUPS["default"]):
            key = keys.get(kind)
            table = self._tables.get(rule_name)
            if key is None or table is None:
                continue
            table.drop_full(now)
            w = table.wait(key, now)
            if w > wait:
                wait, refused_by = w, kind
            picked.append((table, key))
        if wait > 0:
            self._log_flood(group, refused_by, keys.get("ip") or "", now, wait)
            raise RpcError(
                ErrorCode.FLOOD_WAIT,
                f"too many requests; retry in {math.ceil(wait)}s",
                retry_after=math.ceil(wait),
            )
        for table, key in picked:
            table.take(key, now)

    def _log_flood(self, group: str, kind: str, ip: str, now: float, wait: float) -> None:
        key = (group, kind, ip)
        last = self._flood_logged.get(key)
        if last is not None and now - last < FLOOD_LOG_EVERY:
            return
        if len(self._flood_logged) >= FLOOD_LOG_KEYS:
            self._flood_logged.clear()
        self._flood_logged[key] = now
        log.security(
            "flood_wait",
            logging.WARNING,
            group=group,
            key=kind,
            ip=ip or "-",
            retry_after=math.ceil(wait),
        )
