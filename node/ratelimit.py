"""Token-bucket rate limits keyed per IP, per user, per device and per login name.

Each method belongs to a rate group (declared in the API schema); a group names the rules
that apply and what each is keyed by.  A refused call answers FLOOD_WAIT with the seconds
until a token is back, like Telegram's FLOOD_WAIT_X, and is not evaluated at all — which
is what makes guessing login codes hopeless rather than merely slow.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .protocol.errors import ErrorCode, RpcError

MAX_BUCKETS = 200_000  # bounded memory: the least recently used buckets are forgotten


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
}


class _Bucket:
    __slots__ = ("stamp", "tokens")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class RateLimiter:
    def __init__(self, rules: dict[str, Rule], clock: Callable[[], float] = time.monotonic):
        self.rules = rules
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()

    def check(self, group: str, keys: dict[str, str | None]) -> None:
        """Take one token from every applicable bucket, or raise FLOOD_WAIT taking none."""
        now = self._clock()
        picked: list[tuple[_Bucket, Rule]] = []
        wait = 0.0
        for kind, rule_name in GROUPS.get(group, GROUPS["default"]):
            key = keys.get(kind)
            rule = self.rules.get(rule_name)
            if key is None or rule is None:
                continue
            bucket = self._bucket((rule_name, key), rule, now)
            if bucket.tokens < 1:
                wait = max(wait, (1 - bucket.tokens) * rule.period / rule.count)
            picked.append((bucket, rule))
        if wait > 0:
            raise RpcError(
                ErrorCode.FLOOD_WAIT,
                f"too many requests; retry in {math.ceil(wait)}s",
                retry_after=math.ceil(wait),
            )
        for bucket, _ in picked:
            bucket.tokens -= 1

    def _bucket(self, k: tuple[str, str], rule: Rule, now: float) -> _Bucket:
        b = self._buckets.get(k)
        if b is None:
            b = _Bucket(float(rule.count), now)
            self._buckets[k] = b
            if len(self._buckets) > MAX_BUCKETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(k)
            b.tokens = min(rule.count, b.tokens + (now - b.stamp) * rule.count / rule.period)
            b.stamp = now
        return b
