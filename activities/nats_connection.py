"""Connecting to NATS the same way everywhere: URL, credentials file, token, user, TLS.

Options come from flags with environment fallbacks (``NATS_URL`` and friends), so the worker
runs unchanged against a local ``nats-server`` or a secured NATS cluster.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

import nats
from nats.aio.client import Client as NATS

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
INITIAL_CONNECT_ATTEMPTS = 3

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NatsOptions:
    """Where and how to connect to NATS."""

    url: str = DEFAULT_NATS_URL
    creds_file: str = ""
    token: str = ""
    user: str = ""
    password: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    name: str = "backend-install"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add ``--nats-*`` flags whose defaults come from the ``NATS_*`` environment."""
        env = os.environ.get
        group = parser.add_argument_group("NATS")
        group.add_argument(
            "--nats-url",
            default=env("NATS_URL", DEFAULT_NATS_URL),
            help="NATS server URL(s), comma-separated (env NATS_URL; default %(default)s)",
        )
        group.add_argument(
            "--nats-creds",
            default=env("NATS_CREDS", ""),
            help="NATS credentials file with user JWT and seed (env NATS_CREDS)",
        )
        group.add_argument(
            "--nats-token", default=env("NATS_TOKEN", ""), help="NATS token (env NATS_TOKEN)"
        )
        group.add_argument(
            "--nats-user", default=env("NATS_USER", ""), help="NATS user name (env NATS_USER)"
        )
        group.add_argument(
            "--nats-password",
            default=env("NATS_PASSWORD", ""),
            help="NATS password (env NATS_PASSWORD)",
        )
        group.add_argument(
            "--nats-tls-ca",
            default=env("NATS_TLS_CA", ""),
            help="CA bundle that signs the NATS server certificate (env NATS_TLS_CA)",
        )
        group.add_argument(
            "--nats-tls-cert",
            default=env("NATS_TLS_CERT", ""),
            help="client certificate for mutual TLS (env NATS_TLS_CERT)",
        )
        group.add_argument(
            "--nats-tls-key",
            default=env("NATS_TLS_KEY", ""),
            help="client key for mutual TLS (env NATS_TLS_KEY)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, name: str) -> NatsOptions:
        return cls(
            url=args.nats_url,
            creds_file=args.nats_creds,
            token=args.nats_token,
            user=args.nats_user,
            password=args.nats_password,
            tls_ca=args.nats_tls_ca,
            tls_cert=args.nats_tls_cert,
            tls_key=args.nats_tls_key,
            name=name,
        )

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`nats.connect`; reconnects forever once connected."""
        kwargs: dict[str, Any] = {
            "servers": [url.strip() for url in self.url.split(",") if url.strip()],
            "name": self.name,
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

    async def connect(self) -> NATS:
        """Connect; the first connection must succeed, later drops reconnect forever.

        nats-py uses one setting for both, and with "forever" a wrong URL would hang start-up
        instead of failing with a clear error, so the bound is lifted once connected.
        """
        nc = await nats.connect(**self.connect_kwargs())
        nc.options["max_reconnect_attempts"] = -1
        return nc


async def _log_error(err: Exception) -> None:
    log.warning("NATS: %s", err or type(err).__name__)


async def _log_disconnected() -> None:
    log.warning("NATS: disconnected; reconnecting")


async def _log_reconnected() -> None:
    log.info("NATS: reconnected")
