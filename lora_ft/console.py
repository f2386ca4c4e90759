"""Everything a person reads while lora-ft works, in one place.

Components report through this module and never print: :func:`say` for the run's story (standard output),
:func:`status` for progress and signal notices (standard error, so a piped report stays clean). A command that
runs inside another program (a test, ``plan --measure``, a second process of a distributed run) redirects or
silences it with :func:`capture` or :func:`silenced`; a command whose report follows holds it back with
:func:`held_back`, which still lets :func:`notice` and :func:`status` lines through.

It also keeps the libraries' own noise (deprecation chatter, per-file progress bars) off the screen.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

Sink = Callable[[str], None]


def _stdout(message: str) -> None:
    print(message, flush=True)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


_say: list[Sink] = [_stdout]  # a stack: the innermost capture wins
_status: list[Sink] = [_stderr]


def say(message: str = "") -> None:
    """One line (or block) of the run's story."""
    _say[-1](message)


def section(title: str) -> None:
    say(f"\n== {title}")


def note(message: str) -> None:
    say(f"note: {message}")


def warn(message: str) -> None:
    say(f"warning: {message}")


def status(message: str) -> None:
    """Progress, or a notice that must reach a terminal even when the story is piped to a file."""
    _status[-1](message)


@contextmanager
def capture(sink: Sink | None = None) -> Iterator[list[str]]:
    """Send what is said (not status lines) to ``sink``, or collect it in the list this yields."""
    lines: list[str] = []
    _say.append(sink or lines.append)
    try:
        yield lines
    finally:
        _say.pop()


def notice(message: str) -> None:
    """A line the user must see when it happens (another process is awaited, damaged data is read again): part of
    the story, or, while the story is held back for a report (:func:`held_back`), a status line."""
    if _say[-1] is _hold:
        status(message)
    else:
        say(message)


def _hold(_message: str) -> None:
    """The sink of a held-back story: nothing is said."""


@contextmanager
def held_back() -> Iterator[None]:
    """Hold the story back (a report that follows says it all) but let status lines and notices through, so a long
    step still shows its progress and what it waits for."""
    _say.append(_hold)
    try:
        yield
    finally:
        _say.pop()


@contextmanager
def silenced() -> Iterator[None]:
    """Say nothing at all: for a helper run (a measurement) or a process that is not the main one."""
    _say.append(lambda _message: None)
    _status.append(lambda _message: None)
    try:
        yield
    finally:
        _say.pop()
        _status.pop()


def table(rows: Sequence[tuple[str, str]]) -> str:
    """A two-column table between rules, for results."""
    width = max(len(k) for k, _ in rows)
    rule = "-" * (width + 2 + max(len(v) for _, v in rows))
    return "\n".join([rule, *(f"{k.ljust(width)}  {v}" for k, v in rows), rule])


def quiet_libraries() -> None:
    """Keep the libraries' deprecation chatter and per-file progress bars out of the output."""
    import warnings

    import datasets
    import transformers

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
