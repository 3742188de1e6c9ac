"""Holding Ctrl-C through a write: a KeyboardInterrupt (SIGINT) that arrives while a model is
being written is recorded, and delivered as soon as the write is over, so the model is all
old or all new and the interrupt is never lost.

Python runs a signal handler between bytecodes of the main thread, so a Ctrl-C in the middle
of an optimizer step over a thousand loose Params would otherwise stop it with some Params
updated and the rest not. `held` swaps SIGINT's handler for one that only records the signal
(two ``sigaction`` calls, a few microseconds in all) and, on the way out, puts the old
handler back and hands it the recorded signal: Python's default one raises KeyboardInterrupt
right there. Off the main thread (where no signal handler runs) and inside another `held`
it does nothing.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

try:  # the C functions behind `signal`, without its enum wrapping (which costs 70 µs a call)
    import _signal as _raw
except ImportError:  # pragma: no cover (another Python)
    _raw = signal

_SIGINT = int(signal.SIGINT)
F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

_MAIN = threading.main_thread()
_depth = 0  # how many `held` blocks the main thread is in (only it changes this)


_caught: list[Any] = []  # the frames of the SIGINTs held now (main thread only)


def _record(signum: int, frame: Any) -> None:
    _caught.append(frame)


class _Held:
    """The context manager `held` returns (a class, not a generator: it is on hot paths)."""

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        global _depth
        self.previous = None
        if _depth or threading.current_thread() is not _MAIN:
            return
        previous = _raw.getsignal(_SIGINT)
        if previous is None:  # a handler not installed from Python: we could not put it back
            return
        _caught.clear()
        _raw.signal(_SIGINT, _record)
        self.previous = previous
        _depth += 1

    def __exit__(self, *exc: Any) -> None:
        global _depth
        previous = self.previous
        if previous is None:
            return
        _depth -= 1
        _raw.signal(_SIGINT, previous)
        if _caught:
            frame = _caught[0]
            _caught.clear()
            _deliver(previous, frame)


def held() -> _Held:
    """Hold SIGINT through a ``with`` block: one that arrives in it is delivered (to the
    handler that was installed before, normally raising KeyboardInterrupt) when the block
    ends, whether it ends normally or with an exception."""
    return _Held()


def _deliver(handler: Any, frame: Any) -> None:
    """Hand a held SIGINT to the handler it was meant for."""
    if callable(handler):
        handler(signal.SIGINT, frame)  # Python's default: raises KeyboardInterrupt here
    elif handler == signal.SIG_DFL:
        signal.raise_signal(signal.SIGINT)  # the default action: the process ends
    # (SIG_IGN: the signal was to be ignored anyway)


def call(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` with SIGINT held through it. Prefer this (or `holding`) to a ``with
    held():`` of one's own: an exception injected at the ``with`` line just after it was
    entered (a trace function's, as fault-injection tools raise) would skip the exit there,
    while here the ``with`` is in this module."""
    with held():
        return fn(*args)


def holding(fn: F) -> F:
    """``fn`` with SIGINT held through each call (see `held`)."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        with held():
            return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
