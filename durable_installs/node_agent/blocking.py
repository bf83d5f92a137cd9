"""Run blocking file and network work in threads without losing control of it on cancel.

Cancelling an asyncio task does not stop a thread it awaits. If the install task simply went
on to delete its staging directory, the download thread could keep writing into it. So each
job gets an :class:`Abort` token: cancelling the awaiting task triggers the token (which also
shuts down a registered socket to wake a blocked ``recv``) and then *waits for the thread to
finish* before the cancellation propagates. Clean-up code after that point owns the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

from durable_installs.node_agent.errors import Cancelled

T = TypeVar("T")


class Abort:
    """A thread-safe cancellation token shared by an install task and its worker threads."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()

    @property
    def triggered(self) -> bool:
        """Whether the op was cancelled."""
        return self._event.is_set()

    def trigger(self) -> None:
        """Cancel: flag it and wake any thread blocked reading a registered socket."""
        self._event.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def check(self) -> None:
        """Raise :class:`Cancelled` in the calling thread if the op was cancelled."""
        if self._event.is_set():
            raise Cancelled

    @contextlib.contextmanager
    def watching(self, sock: socket.socket | None) -> Iterator[None]:
        """Shut ``sock`` down if the op is cancelled while the block runs."""
        if sock is None:
            yield
            return
        with self._lock:
            self._sockets.add(sock)
        try:
            self.check()
            yield
        finally:
            with self._lock:
                self._sockets.discard(sock)


async def run_blocking(executor: Executor, abort: Abort, func: Callable[[], T]) -> T:
    """Run ``func`` in ``executor``; on cancellation trigger ``abort`` and wait for the thread."""
    future = asyncio.get_running_loop().run_in_executor(executor, func)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        abort.trigger()
        while not future.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([future])
        with contextlib.suppress(BaseException):
            future.result()
        raise
