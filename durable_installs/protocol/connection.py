"""Connecting to NATS the same way on both sides: URL, credentials file, token, user, TLS.

The orchestrator's worker and the node agent share these options, flags and environment
fallbacks (``NATS_URL``, ``NATS_CREDS``, ``NATS_TOKEN``, ``NATS_USER``, ``NATS_PASSWORD``,
``NATS_TLS_*``), so both run unchanged against a local ``nats-server`` or a secured cluster.
Secrets come from the environment by preference and are never shown in ``--help``.

A first connection that fails raises :class:`NatsStartupError`, one line that says what to
set (a refused credential or an untrusted certificate fails at once instead of being retried
like a network error). A client given a CA insists on TLS. The server refuses subjects a user
may not use only asynchronously; :func:`permissions_violation` makes that visible.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import ssl
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from durable_installs.protocol.context import (
    DEV_CONTEXT,
    ContextError,
    NatsContext,
    context_path,
    read_context,
)

__all__ = ["ContextError", "NatsOptions", "NatsStartupError", "permissions_violation"]
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
INITIAL_CONNECT_ATTEMPTS = 3
AUTHORIZATION_VIOLATION = "authorization violation"
PERMISSIONS_VIOLATION = "permissions violation"
CREDENTIALS_HINT = (
    "set NATS_CONTEXT, NATS_USER/NATS_PASSWORD or NATS_CREDS "
    "(or --nats-context/--nats-user/--nats-password/--nats-creds)"
)
CONTEXT_FIELDS = {
    "url": "NATS_URL",
    "creds": "NATS_CREDS",
    "token": "NATS_TOKEN",
    "user": "NATS_USER",
    "password": "NATS_PASSWORD",
    "tls_ca": "NATS_TLS_CA",
    "tls_cert": "NATS_TLS_CERT",
    "tls_key": "NATS_TLS_KEY",
}
"""Each ``--nats-<name>`` flag and its variable: when any is set, no context is discovered."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatsOptions:
    """Where and how to connect to NATS."""

    url: str = field(default_factory=lambda: os.environ.get("NATS_URL", DEFAULT_NATS_URL))
    creds_file: str = ""
    token: str = ""
    user: str = ""
    password: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    source: str = ""
    """Where the credentials came from, for a refusal's message (a context file, ...)."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the ``--nats-*`` flags; unset flags fall back to the ``NATS_*`` environment."""
        group = parser.add_argument_group(
            "NATS",
            "Unset options fall back to the NATS_* environment, then to the nats CLI context "
            f"NATS_CONTEXT names, then, run from a checkout with a dev stack, to {DEV_CONTEXT}.",
        )
        group.add_argument(
            "--nats-context",
            help="a nats CLI context: its name or the path of its JSON file (env NATS_CONTEXT)",
        )
        group.add_argument(
            "--nats-url",
            help=f"NATS server URL(s), comma-separated (env NATS_URL; default {DEFAULT_NATS_URL})",
        )
        group.add_argument("--nats-creds", help="credentials (.creds) file (env NATS_CREDS)")
        group.add_argument("--nats-token", help="auth token (env NATS_TOKEN)")
        group.add_argument("--nats-user", help="user name (env NATS_USER)")
        group.add_argument(
            "--nats-password", help="password (env NATS_PASSWORD, preferable: ps shows flags)"
        )
        group.add_argument("--nats-tls-ca", help="CA bundle that signs the server certificate")
        group.add_argument("--nats-tls-cert", help="client certificate for mutual TLS")
        group.add_argument("--nats-tls-key", help="private key of --nats-tls-cert")

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, discover: bool = True) -> NatsOptions:
        """Options from parsed flags, each falling back to its environment variable, then to a
        context (``--nats-context``/``NATS_CONTEXT``, else, with ``discover``, the dev stack's
        when none of the rest is set and it exists: the orchestrator's, so a node agent does
        not discover it). Raises :class:`ContextError` for an unusable context."""
        env = os.environ.get
        flags = [getattr(args, f"nats_{name}", None) for name in CONTEXT_FIELDS]
        context, source = NatsContext(), ""
        chosen = getattr(args, "nats_context", None) or env("NATS_CONTEXT")
        if chosen:
            path = context_path(chosen)
            context, source = read_context(path), f"the NATS context {path}"
        elif (
            discover
            and not any(flags)
            and not any(env(v) for v in CONTEXT_FIELDS.values())
            and DEV_CONTEXT.is_file()
        ):
            context, source = read_context(DEV_CONTEXT), f"the dev stack's {DEV_CONTEXT}"

        def pick(flag: str | None, variable: str, from_context: str, default: str = "") -> str:
            return flag or env(variable) or from_context or default

        return cls(
            url=pick(args.nats_url, "NATS_URL", context.url, DEFAULT_NATS_URL),
            creds_file=pick(args.nats_creds, "NATS_CREDS", context.creds),
            token=pick(args.nats_token, "NATS_TOKEN", context.token),
            user=pick(args.nats_user, "NATS_USER", context.user),
            password=pick(args.nats_password, "NATS_PASSWORD", context.password),
            tls_ca=pick(args.nats_tls_ca, "NATS_TLS_CA", context.ca),
            tls_cert=pick(args.nats_tls_cert, "NATS_TLS_CERT", context.cert),
            tls_key=pick(args.nats_tls_key, "NATS_TLS_KEY", context.key),
            source=source,
        )

    def connect_kwargs(self, name: str) -> dict[str, Any]:
        """Keyword arguments for :func:`nats.connect`; ``name`` shows in server monitoring."""
        kwargs: dict[str, Any] = {
            "servers": [url.strip() for url in self.url.split(",") if url.strip()],
            "name": name,
            "allow_reconnect": True,
            "max_reconnect_attempts": INITIAL_CONNECT_ATTEMPTS,
            "reconnect_time_wait": 1,
            "connect_timeout": 5,
            "error_cb": _log_error,
            "disconnected_cb": _log_disconnected,
            "reconnected_cb": _log_reconnected,
        }
        if self.creds_file:
            kwargs["user_credentials"] = self.creds_file
        if self.token:
            kwargs["token"] = self.token
        if self.user:
            kwargs["user"] = self.user
            kwargs["password"] = self.password
        if self.tls_ca or self.tls_cert:
            context = ssl.create_default_context(cafile=self.tls_ca or None)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key or None)
            kwargs["tls"] = context
        return kwargs

    async def connect(self, name: str, inbox_prefix: str | None = None) -> NATS:
        """Connect; the first connection must succeed, later drops reconnect forever.

        nats-py uses one setting for both, and with "forever" a wrong URL would hang start-up
        instead of failing with a clear error, so the bound is lifted once connected. A refused
        credential ends the attempt at once (nats-py would retry it like a network error) and
        every failure is a :class:`NatsStartupError` whose one line says what to set.
        ``inbox_prefix`` moves this connection's request inboxes off ``_INBOX`` (node agents
        may only use their own subjects).
        """
        try:
            kwargs = self.connect_kwargs(name)
        except (OSError, ssl.SSLError) as err:
            raise NatsStartupError(
                f"cannot load the NATS TLS files (NATS_TLS_CA/NATS_TLS_CERT/NATS_TLS_KEY): "
                f"{getattr(err, 'strerror', None) or type(err).__name__}"
                + (f": {err.filename}" if getattr(err, "filename", None) else "")
            ) from err
        if inbox_prefix:
            kwargs["inbox_prefix"] = inbox_prefix
        refused: asyncio.Future[Exception] = asyncio.get_running_loop().create_future()
        connecting = True
        tls_errors: list[ssl.SSLError] = []

        async def on_error(err: Exception) -> None:
            if not connecting:
                await _log_error(err)
            elif _is_refusal(err) and not refused.done():
                refused.set_result(err)
            elif isinstance(err, ssl.SSLError):
                tls_errors.append(err)
            # other errors while connecting: retried, and the final error says it all

        async def on_disconnected() -> None:
            # A close or drain we asked for is no news; only a lost connection is.
            if not connecting and not (nc.is_closed or nc.is_draining):
                await _log_disconnected()

        kwargs["error_cb"] = on_error
        kwargs["disconnected_cb"] = on_disconnected
        nc = NATS()
        attempt = asyncio.ensure_future(nc.connect(**kwargs))
        try:
            racing: set[asyncio.Future[Any]] = {attempt, refused}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not attempt.done():
                attempt.cancel()
        if refused.done():
            with contextlib.suppress(BaseException):
                await attempt
            with contextlib.suppress(Exception):
                await nc.close()
            raise NatsStartupError(self._explain(refused.result())) from refused.result()
        refused.cancel()
        try:
            attempt.result()
        except Exception as err:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = tls_errors[-1] if tls_errors else err  # "no servers" hides a TLS failure
            raise NatsStartupError(self._explain(cause)) from err
        # nats-py upgrades to TLS only when the server asks; a client given a CA must not
        # silently talk in clear to a server that does not (INFO has no public accessor).
        if (self.tls_ca or self.tls_cert) and not nc._server_info.get("tls_required"):
            await nc.close()
            raise NatsStartupError(
                f"NATS at {self.redacted_url} does not offer TLS, but NATS_TLS_CA or "
                "NATS_TLS_CERT is set: enable tls on the server or unset them"
            )
        connecting = False
        nc.options["max_reconnect_attempts"] = -1
        return nc

    @property
    def redacted_url(self) -> str:
        """The server URL(s) without any user or password embedded in them."""
        return ",".join(_redact(url.strip()) for url in self.url.split(",") if url.strip())

    def _explain(self, err: BaseException) -> str:
        """One line for a failed first connection, saying what to set; never server text."""
        where = f"NATS at {self.redacted_url}"
        text = str(err).lower()
        if isinstance(err, nats.errors.AuthorizationError) or AUTHORIZATION_VIOLATION in text:
            used = f"the credentials from {self.source}" if self.source else "these credentials"
            kept = (
                f"; the dev stack keeps its users in {DEV_CONTEXT.parent} (context "
                f"{DEV_CONTEXT}, one env file per user)"
                if DEV_CONTEXT.is_file()
                else ""
            )
            return f"{where} refused: credentials ({used}) — {CREDENTIALS_HINT}{kept}"
        if isinstance(err, ssl.SSLCertVerificationError):
            return (
                f"{where}: the server certificate is not trusted ({err.verify_message}) — "
                "set NATS_TLS_CA (or --nats-tls-ca) to the CA that signed it"
            )
        if isinstance(err, ssl.SSLError) and _client_certificate_refused(err):
            return (
                f"{where} refused the TLS connection: it requires a client certificate its CA "
                "signed — set NATS_TLS_CERT/NATS_TLS_KEY (or --nats-tls-cert/--nats-tls-key)"
            )
        if isinstance(err, ssl.SSLError):
            return f"{where}: TLS failed ({err.reason or type(err).__name__})"
        if "tls" in text or "secure connection" in text:
            return (
                f"{where} requires TLS — set NATS_TLS_CA (or --nats-tls-ca) to the CA that "
                "signed its certificate"
            )
        if isinstance(err, nats.errors.NoServersError | OSError | asyncio.TimeoutError):
            return (
                f"cannot connect to {where}: no server answered after "
                f"{INITIAL_CONNECT_ATTEMPTS} attempts — is nats-server running there? "
                "set NATS_URL (or --nats-url)"
            )
        return f"cannot connect to {where}: {type(err).__name__}"


class NatsStartupError(RuntimeError):
    """NATS cannot be used as configured; the message is one line that says what to change."""


def _is_refusal(err: Exception) -> bool:
    """A refusal that retrying cannot fix: credentials or TLS trust."""
    if isinstance(err, nats.errors.AuthorizationError | ssl.SSLCertVerificationError):
        return True
    if isinstance(err, ssl.SSLError) and _client_certificate_refused(err):
        return True
    return AUTHORIZATION_VIOLATION in str(err).lower()


def _client_certificate_refused(err: ssl.SSLError) -> bool:
    """The server's TLS alert says our client certificate is missing or not trusted."""
    reason = err.reason or ""
    return any(
        alert in reason for alert in ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA")
    )


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"***@{host}"))


async def permissions_violation(nc: NATS, before: Exception | None, flushes: int = 2) -> str | None:
    """The server's "permissions violation" text for this connection since ``before``, if any.

    The server refuses a subscription or publish it does not allow with an asynchronous
    ``-ERR``; nats-py then only calls its error callback and keeps the subscription as if it
    worked. nats-py writes the PING of ``flush()`` straight to the socket, ahead of commands
    still queued for its flusher task, so one round trip can overtake the SUB (seen about one
    time in five); the second goes after it. A caller that has just flushed once passes
    ``flushes=1``. ``before`` is ``nc.last_error`` taken before the operation.
    """
    for _ in range(flushes):
        await nc.flush()
    err = nc.last_error
    if err is None or err is before or PERMISSIONS_VIOLATION not in str(err).lower():
        return None
    return str(err).removeprefix("nats: ")


async def _log_error(err: Exception) -> None:
    log.warning("NATS: %s", err or type(err).__name__)


async def _log_disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _log_reconnected() -> None:
    log.info("NATS: reconnected")
