"""Connecting to NATS the same way on both sides: URL, credentials file, token, user, TLS.

The orchestrator's worker and the node agent share these options, flags and environment
fallbacks (``NATS_URL``, ``NATS_CREDS``, ``NATS_TOKEN``, ``NATS_USER``, ``NATS_PASSWORD``,
``NATS_TLS_*``), so both run unchanged against a local ``nats-server`` or a secured cluster.
Secrets come from the environment by preference and are never shown in ``--help``.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from dataclasses import dataclass, field
from typing import Any

import nats
from nats.aio.client import Client as NATS

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
INITIAL_CONNECT_ATTEMPTS = 3

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

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """Add the ``--nats-*`` flags; unset flags fall back to the ``NATS_*`` environment."""
        group = parser.add_argument_group("NATS")
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
    def from_args(cls, args: argparse.Namespace) -> NatsOptions:
        """Options from parsed flags, each falling back to its environment variable."""
        env = os.environ.get

        def pick(flag: str | None, variable: str, default: str = "") -> str:
            return flag or env(variable, default)

        return cls(
            url=pick(args.nats_url, "NATS_URL", DEFAULT_NATS_URL),
            creds_file=pick(args.nats_creds, "NATS_CREDS"),
            token=pick(args.nats_token, "NATS_TOKEN"),
            user=pick(args.nats_user, "NATS_USER"),
            password=pick(args.nats_password, "NATS_PASSWORD"),
            tls_ca=pick(args.nats_tls_ca, "NATS_TLS_CA"),
            tls_cert=pick(args.nats_tls_cert, "NATS_TLS_CERT"),
            tls_key=pick(args.nats_tls_key, "NATS_TLS_KEY"),
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

    async def connect(self, name: str) -> NATS:
        """Connect; the first connection must succeed, later drops reconnect forever.

        nats-py uses one setting for both, and with "forever" a wrong URL would hang start-up
        instead of failing with a clear error, so the bound is lifted once connected.
        """
        nc = await nats.connect(**self.connect_kwargs(name))
        nc.options["max_reconnect_attempts"] = -1
        return nc


async def _log_error(err: Exception) -> None:
    log.warning("NATS: %s", err or type(err).__name__)


async def _log_disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _log_reconnected() -> None:
    log.info("NATS: reconnected")
