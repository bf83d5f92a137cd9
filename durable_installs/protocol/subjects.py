"""NATS subjects of the install protocol and the validation of their dynamic tokens.

LocalAI rewrites ``.``, ``*``, ``>``, space, tab and newline in a node id or op id to ``-``
before building a subject. Two different ids can therefore land on the same subject
(``a.b`` and ``a-b`` reach the same node), so we refuse any id that the rewrite would
change instead of rewriting it: an install must never be routed to a node other than the one
named. Control characters and other whitespace are refused too: they are not legal in a
subject at all and would break the NATS protocol line.
"""

from __future__ import annotations

MAX_TOKEN_LENGTH = 256
_REWRITTEN_BY_LOCALAI = frozenset(".*> \t\n")


class InvalidSubjectToken(ValueError):
    """A node id or op id that cannot be used as one NATS subject token."""

    def __init__(self, field: str, value: str, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field} {value!r} is not a valid subject token: {reason}")


def token_problem(value: str) -> str | None:
    """Why ``value`` cannot be a subject token, or None when it can."""
    if not value:
        return "it is empty"
    if len(value) > MAX_TOKEN_LENGTH:
        return f"it is {len(value)} characters long; the limit is {MAX_TOKEN_LENGTH}"
    for ch in value:
        if ch in _REWRITTEN_BY_LOCALAI:
            return (
                f"it contains {ch!r}, which LocalAI rewrites to '-' and which could "
                "route the message to a different node"
            )
        if ch.isspace() or not ch.isprintable():
            return f"it contains the control or whitespace character {ch!r}"
    return None


def check_token(field: str, value: str) -> str:
    """Return ``value`` unchanged if it is a valid token; raise naming ``field`` otherwise."""
    problem = token_problem(value)
    if problem is not None:
        raise InvalidSubjectToken(field, value, problem)
    return value


def _node_prefix(node_id: str) -> str:
    return f"nodes.{check_token('node_id', node_id)}"


def install(node_id: str) -> str:
    """``nodes.<node>.backend.install``: request/reply, install and run a slot."""
    return f"{_node_prefix(node_id)}.backend.install"


def upgrade(node_id: str) -> str:
    """``nodes.<node>.backend.upgrade``: request/reply, force re-pull of a backend."""
    return f"{_node_prefix(node_id)}.backend.upgrade"


def rollback(node_id: str) -> str:
    """``nodes.<node>.backend.rollback`` (agent extension): restore the kept previous version."""
    return f"{_node_prefix(node_id)}.backend.rollback"


def previous_drop(node_id: str) -> str:
    """``nodes.<node>.backend.previous.drop`` (agent extension): forget the kept version."""
    return f"{_node_prefix(node_id)}.backend.previous.drop"


def progress(node_id: str, op_id: str) -> str:
    """``nodes.<node>.backend.install.<op>.progress``: progress events of one op."""
    return f"{_node_prefix(node_id)}.backend.install.{check_token('op_id', op_id)}.progress"


def cancel(node_id: str, op_id: str) -> str:
    """``nodes.<node>.backend.install.<op>.cancel``: node agent extension, stop one op."""
    return f"{_node_prefix(node_id)}.backend.install.{check_token('op_id', op_id)}.cancel"


def install_status(node_id: str) -> str:
    """``nodes.<node>.backend.install.status``: node agent extension used by the probe."""
    return f"{_node_prefix(node_id)}.backend.install.status"


def backend_list(node_id: str) -> str:
    """``nodes.<node>.backend.list``: request/reply, backends on disk."""
    return f"{_node_prefix(node_id)}.backend.list"


def backend_delete(node_id: str) -> str:
    """``nodes.<node>.backend.delete``: request/reply, remove a backend."""
    return f"{_node_prefix(node_id)}.backend.delete"


def backend_stop(node_id: str) -> str:
    """``nodes.<node>.backend.stop``: publish only, stop processes."""
    return f"{_node_prefix(node_id)}.backend.stop"


def models_running(node_id: str) -> str:
    """``nodes.<node>.models.running``: request/reply, live slots."""
    return f"{_node_prefix(node_id)}.models.running"


def files_space(node_id: str) -> str:
    """``nodes.<node>.files.space`` (agent extension): free space for staged model files.

    Beside LocalAI's own ``files.ensure``, ``files.stage``, ``files.temp`` and
    ``files.listdir`` (S3 staging), never one of them.
    """
    return f"{_node_prefix(node_id)}.files.space"


def node_stop(node_id: str) -> str:
    """``nodes.<node>.stop``: publish only, the node deregisters and exits."""
    return f"{_node_prefix(node_id)}.stop"


def op_reply(inbox_prefix: str, node_id: str, op_id: str) -> str:
    """``<inbox prefix>.op.<node>.<op>``: where the node's reply to an op's install goes.

    Not a LocalAI subject: a reply subject is the requester's choice, and any worker answers
    to whatever the request names (over ``allow_responses`` under NATS auth). Derived from the
    op instead of a random inbox so that whoever waits for the op (the fast path, then the
    install activity, on this worker or another) listens where the one reply will arrive, and
    nothing has to be sent twice to be heard. On the requester's inbox prefix, so the
    subscribe permission it already has for its inboxes covers it.
    """
    return f"{inbox_prefix}.op.{check_token('node_id', node_id)}.{check_token('op_id', op_id)}"
