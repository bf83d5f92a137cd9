"""One input check for every workflow: what a start with no input, or a bad one, fails with.

Every workflow validates its input before it does anything else, because nothing after that
may see a value out of bounds (NaN, 1e300, a node id with a wildcard). The checks had grown
three shapes (the install's stand-in, the rollout's and upgrade's problems list, the delete's
and drift's one line); this is the one they share, so that a missing input always names the
smallest valid one, an invalid input always names the invalid fields, and the list that
travels in the failure is always cut to ``MAX_PROBLEMS_SHOWN``.

Plain deterministic code, passed through the sandbox like the workflows' cores
(``tests/test_architecture.py`` checks it reads no clock, randomness or environment).
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import INVALID_INPUT
from durable_installs.contracts.install import (
    MAX_PROBLEMS_SHOWN,
    describe_problems,
    missing_input_message,
)

MISSING_INPUT = ("input", "it is missing")
"""The one problem of a start with no input (or ``null``)."""


class ChecksItself(Protocol):
    """A workflow input that can list its own problems (field, reason), values never echoed."""

    def problems(self) -> list[tuple[str, str]]: ...


InputT = TypeVar("InputT", bound=ChecksItself)


@dataclass(frozen=True)
class CheckedInput(Generic[InputT]):
    """A workflow's input after the check: the input when valid, else why not."""

    input: InputT | None
    """The input, or None when it is missing or invalid: nothing may run with it then (a
    workflow that needs one for its query puts a harmless stand-in in its place)."""
    invalid: str = ""
    """The failure message ("" when the input is valid)."""
    problems: list[tuple[str, str]] = field(default_factory=list)
    """The invalid fields and why, at most ``MAX_PROBLEMS_SHOWN`` (the message counts the rest)."""

    def failure(self, *, with_problems: bool = True) -> ApplicationError:
        """The ``InvalidInput`` failure, never retried: retrying cannot fix an input.

        The problems travel as the failure's details so that a caller (a rollout's table, a
        client) can name the fields without parsing the message. The delete and the drift
        check have always failed without details; they pass ``with_problems=False`` so that
        their failures stay what callers have seen.
        """
        details = [self.problems] if with_problems else []
        return ApplicationError(self.invalid, *details, type=INVALID_INPUT, non_retryable=True)


def check_input(
    input: InputT | None,
    minimal_example: Mapping[str, object],
    more_problems: Sequence[tuple[str, str]] = (),
) -> CheckedInput[InputT]:
    """Check ``input``; ``minimal_example`` is what a start without one is told to pass.

    ``more_problems`` are problems only the workflow can see (a rollout checks its own
    workflow id's length); they count only when there is an input to check.
    """
    if input is None:
        return CheckedInput(None, missing_input_message(minimal_example), [MISSING_INPUT])
    problems = [*input.problems(), *more_problems]
    if not problems:
        return CheckedInput(input)
    return CheckedInput(
        None, f"invalid input: {describe_problems(problems)}", problems[:MAX_PROBLEMS_SHOWN]
    )
