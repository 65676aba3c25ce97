"""Per-user allowances for upload parts, so the quota and the cap on uploads in progress are
checked before a part touches the disk without a database read for every part.

A read of the user's usage (``store.part_budget``) grants a small allowance: some bytes
(at most ``GRANT_BYTES``, never past the quota) and a few new upload ids (never past the
cap), valid for ``GRANT_SECONDS``. Parts spend it; when it is spent or stale the next part
reads again. The limits stay those of the database: a grant is only ever carved out of
what the read showed to be free. (Parts in flight while a read runs are not in it, as with
a read per part: the overshoot is bounded by the parts a session may have in flight.)
One read per ``GRANT_BYTES`` instead of one per part: about 2 s of node CPU per GiB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

GRANT_BYTES = 16 << 20
GRANT_UPLOADS = 16
GRANT_SECONDS = 2.0


@dataclass
class _Grant:
    bytes_left: int
    new_uploads_left: int
    expires: float
    uploads: set[str] = field(default_factory=set)  # known to exist or admitted already


class Budgets:
    def __init__(self, quota: int, max_uploads: int) -> None:
        self.quota = quota  # 0: no byte quota
        self.max_uploads = max_uploads
        self._grants: dict[int, _Grant] = {}

    def take(self, user_id: int, upload_id: str, size: int) -> bool:
        """Spend from the user's allowance; False: read the database and ``grant``."""
        g = self._grants.get(user_id)
        if g is None or g.expires < time.monotonic():
            self._grants.pop(user_id, None)
            return False
        new = upload_id not in g.uploads
        if (new and g.new_uploads_left <= 0) or (self.quota and size > g.bytes_left):
            return False
        if new:
            g.new_uploads_left -= 1
            g.uploads.add(upload_id)
        g.bytes_left -= size
        return True

    def grant(self, user_id: int, upload_id: str, size: int, use: int, uploads: int) -> None:
        """After a read showed ``use`` bytes and ``uploads`` uploads in progress (this one
        included if it exists), and admitted this part of ``size`` bytes."""
        free = self.quota - use - size if self.quota else GRANT_BYTES
        self._grants[user_id] = _Grant(
            bytes_left=max(0, min(GRANT_BYTES, free)),
            new_uploads_left=max(0, min(GRANT_UPLOADS, self.max_uploads - uploads - 1)),
            expires=time.monotonic() + GRANT_SECONDS,
            uploads={upload_id},
        )

    def forget(self, user_id: int) -> None:
        """Usage changed outside parts (a complete, a gc): the next part reads again."""
        self._grants.pop(user_id, None)

    def clear(self) -> None:
        self._grants.clear()

    def __len__(self) -> int:
        return len(self._grants)
