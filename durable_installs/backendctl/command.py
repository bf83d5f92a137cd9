"""What a backendctl subcommand is: an optional local check, then one handler.

Every subcommand sets one :class:`Command` as its parser default, so ``cli.run`` runs them
all one way: the check before connecting anywhere (a bad input or an unreadable gallery
costs no connection), then the handler with a :class:`Context` holding the client.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TextIO, TypeAlias, TypeVar, overload

from temporalio.client import Client

T = TypeVar("T")

Subcommands: TypeAlias = "argparse._SubParsersAction[Any]"
"""Where each command module adds its subparser (``add_subparsers``' result)."""


@dataclass
class Session:
    """What Ctrl-C needs to say: the workflow being watched, if any."""

    watching: str = ""
    starting: str = ""


@dataclass(frozen=True)
class Finished:
    """A check that did the whole command locally (``list --print-query``): its exit code."""

    code: int


@dataclass(frozen=True)
class Context(Generic[T]):
    """What every handler gets: the flags, a connected client, what its check returned,
    where to print, and the session Ctrl-C reports on."""

    args: argparse.Namespace
    client: Client
    checked: T
    out: TextIO
    err: TextIO
    live: bool = False
    """Redraw in place (a terminal without ``--no-live``) rather than print a line a change."""
    session: Session = field(default_factory=Session)


Handler: TypeAlias = Callable[[Context[T]], Awaitable[int]]
Check: TypeAlias = Callable[[argparse.Namespace, TextIO], "T | Finished"]


@dataclass(frozen=True)
class Command(Generic[T]):
    """One subcommand: ``check`` (local, may finish the command) and then ``handler``."""

    handler: Handler[T]
    check: Check[T]


def no_check(args: argparse.Namespace, out: TextIO) -> None:
    """The check of a command with nothing to check before connecting."""
    return None


@overload
def set_command(parser: argparse.ArgumentParser, handler: Handler[None]) -> None: ...


@overload
def set_command(parser: argparse.ArgumentParser, handler: Handler[T], check: Check[T]) -> None: ...


def set_command(
    parser: argparse.ArgumentParser, handler: Handler[Any], check: Check[Any] = no_check
) -> None:
    """Make ``handler`` (after ``check``) what ``parser``'s subcommand runs."""
    parser.set_defaults(subcommand=Command(handler=handler, check=check))
