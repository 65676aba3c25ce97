"""Keeps the part writes of an upload and its completion apart, in this process.

Without it, a part still being written (an open file descriptor in a thread) while
``media.complete`` verifies and renames the upload would land in the content-addressed file
*after* it was verified, corrupting a file that other users' uploads are deduplicated onto.
So: any number of part writes may run at once; completion waits for them to finish and
refuses new ones until it is done; a second completion of the same upload waits its turn
(and then finds the upload gone).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

Key = tuple[int, str]  # (user id, upload id)


class Completing(Exception):
    """A part arrived while its upload is being completed."""


class _State:
    def __init__(self) -> None:
        self.writers = 0
        self.completing = False
        self.drained = trio.Event()
        self.lock = trio.Lock()  # one completion at a time
        self.waiting = 0  # completions holding or waiting for the lock


class UploadGuards:
    def __init__(self) -> None:
        self._states: dict[Key, _State] = {}

    def _release(self, key: Key, st: _State) -> None:
        if st.writers == 0 and st.waiting == 0 and self._states.get(key) is st:
            del self._states[key]

    @asynccontextmanager
    async def part(self, key: Key) -> AsyncIterator[None]:
        """Around writing one part to disk (raises Completing instead of waiting)."""
        st = self._states.setdefault(key, _State())
        if st.completing:
            raise Completing
        st.writers += 1
        try:
            yield
        finally:
            st.writers -= 1
            if st.writers == 0:
                st.drained.set()
            self._release(key, st)

    @asynccontextmanager
    async def complete(self, key: Key) -> AsyncIterator[None]:
        """Around verifying and storing an upload: no part write runs meanwhile."""
        st = self._states.setdefault(key, _State())
        st.waiting += 1
        try:
            async with st.lock:
                st.completing = True
                try:
                    if st.writers:
                        st.drained = trio.Event()
                        await st.drained.wait()
                    yield
                finally:
                    st.completing = False
        finally:
            st.waiting -= 1
            self._release(key, st)

    def __len__(self) -> int:
        return len(self._states)
