"""A thin client of the distribution API (``/v2/``) over ``httpx``: manifests and blobs.

Why not a library that does more: the pull needs to verify each blob's digest *while* it
streams, resume a blob from its ``.partial`` file, report progress per chunk and stop at once
on cancel (the socket is shut down, see :class:`node_agent.blocking.Abort`); the distribution
API for reading is four requests, so owning them costs less than adapting a library that
buffers or retries on its own. ``httpx`` does the HTTP (redirects to blob storage drop the
``Authorization`` header across origins; connection reuse).

Runs in a worker thread. Errors are :class:`PullError` with our own text: status codes and
what they mean, never a registry's response body.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from durable_installs.node_agent.blocking import Abort
from durable_installs.node_agent.oci import auth
from durable_installs.node_agent.oci.errors import PullError
from durable_installs.node_agent.oci.manifest import ACCEPT, MAX_MANIFEST_BYTES, Descriptor
from durable_installs.node_agent.oci.reference import Reference

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_TOKEN_BYTES = 64 * 1024
TRANSPORT_RETRIES = 3
"""Extra attempts of one blob after a dropped connection (LocalAI retries layers 3 times)."""

BytesFn = Callable[[int], None]
"""Called with the bytes of the current blob that are on disk so far."""

_STATUS_CAUSES = {
    401: "authentication failed (HTTP 401 unauthorized)",
    403: "access denied (HTTP 403 forbidden)",
    404: "not found in the registry (HTTP 404)",
    429: "the registry is rate limiting this node (HTTP 429 too many requests)",
}


def _status_error(status: int, what: str) -> PullError:
    cause = _STATUS_CAUSES.get(status) or f"the registry answered HTTP {status}"
    transient = status == 429 or status >= 500 or status == 408
    return PullError(f"{what}: {cause}", permanent=not transient)


def _socket_of(response: httpx.Response) -> socket.socket | None:
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    return sock if isinstance(sock, socket.socket) else None


def hash_prefix(path: Path) -> tuple[hashlib._Hash, int]:
    """sha256 state and size of what a ``.partial`` file already holds."""
    digest = hashlib.sha256()
    size = 0
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    return digest, size


class Registry:
    """Reads one repository of one registry; authenticates on the first ``401``."""

    def __init__(
        self,
        ref: Reference,
        *,
        timeout: float,
        abort: Abort,
        credentials: auth.Credentials | None = None,
    ) -> None:
        self.ref = ref
        self._abort = abort
        self._credentials = credentials or auth.credentials_for(ref.registry)
        self._authorization = ""
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            follow_redirects=True,
            max_redirects=5,
            trust_env=False,
            headers={"User-Agent": "node-agent"},
        )

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- requests ---------------------------------------------------------------------------

    def _url(self, kind: str, target: str) -> str:
        return f"{self.ref.base_url}/v2/{self.ref.repository}/{kind}/{target}"

    @contextmanager
    def _get(self, url: str, headers: dict[str, str], what: str) -> Iterator[httpx.Response]:
        """GET ``url`` streaming; on ``401`` authenticate once and repeat."""
        for attempt in range(2):
            self._abort.check()
            sent = dict(headers)
            if self._authorization:
                sent["Authorization"] = self._authorization
            try:
                response = self._client.send(
                    self._client.build_request("GET", url, headers=sent), stream=True
                )
            except httpx.TooManyRedirects as err:
                raise PullError(f"{what}: too many redirects", permanent=True) from err
            except httpx.HTTPError as err:
                self._abort.check()
                raise PullError(f"{what}: {type(err).__name__}: {err}", permanent=False) from err
            try:
                if response.status_code == 401 and attempt == 0:
                    challenge = response.headers.get("WWW-Authenticate", "")
                    response.close()
                    self._authenticate(challenge, what)
                    continue
                with self._abort.watching(_socket_of(response)):
                    yield response
                return
            finally:
                response.close()
        raise AssertionError("unreachable")

    def _authenticate(self, header: str, what: str) -> None:
        challenge = auth.parse_challenge(header)
        if challenge is None:
            raise PullError(
                f"{what}: authentication required (HTTP 401) with a challenge this agent "
                "does not support",
                permanent=True,
            )
        if challenge.scheme == "basic":
            if self._credentials is None:
                raise PullError(
                    f"{what}: authentication required (HTTP 401) and no credentials for "
                    f"{self.ref.registry} in {auth.docker_config_path()}",
                    permanent=True,
                )
            self._authorization = self._credentials.basic()
            return
        self._authorization = "Bearer " + self._token(challenge, what)

    def _token(self, challenge: auth.Challenge, what: str) -> str:
        realm = challenge.params.get("realm", "")
        if not auth.realm_allowed(realm, self.ref.loopback):
            raise PullError(
                f"{what}: the registry's token service is not an https:// URL; refused",
                permanent=True,
            )
        params = {k: v for k, v in challenge.params.items() if k in ("service", "scope")}
        params.setdefault("scope", f"repository:{self.ref.repository}:pull")
        headers = {"Authorization": self._credentials.basic()} if self._credentials else {}
        try:
            with self._client.stream("GET", realm, params=params, headers=headers) as response:
                if response.status_code != 200:
                    raise _status_error(response.status_code, f"{what}: token service")
                body = _read_bounded(response, MAX_TOKEN_BYTES, f"{what}: token answer")
        except httpx.HTTPError as err:
            raise PullError(
                f"{what}: token service: {type(err).__name__}", permanent=False
            ) from err
        try:
            data = httpx.Response(200, content=body).json()
        except ValueError as err:
            raise PullError(f"{what}: token answer is not JSON", permanent=True) from err
        token = data.get("token") or data.get("access_token") if isinstance(data, dict) else None
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise PullError(f"{what}: token answer has no token", permanent=True)
        if any(c in token for c in "\r\n"):
            raise PullError(f"{what}: token answer has an invalid token", permanent=True)
        return token

    # --- manifests and blobs ----------------------------------------------------------------

    def manifest(self, target: str) -> tuple[bytes, str]:
        """The manifest or index ``target`` (tag or digest) names: raw bytes and Content-Type."""
        what = f"manifest {target}"
        with self._get(self._url("manifests", target), {"Accept": ACCEPT}, what) as response:
            if response.status_code != 200:
                raise _status_error(response.status_code, what)
            body = _read_bounded(response, MAX_MANIFEST_BYTES, what)
            return body, response.headers.get("Content-Type", "")

    def small_blob(self, descriptor: Descriptor, limit: int, what: str) -> bytes:
        """A small blob (the image config) read into memory, bounded by ``limit``."""
        if descriptor.size > limit:
            raise PullError(f"{what} is larger than {limit} bytes", permanent=True)
        with self._get(self._url("blobs", descriptor.digest), {}, what) as response:
            if response.status_code != 200:
                raise _status_error(response.status_code, what)
            return _read_bounded(response, limit, what)

    def blob(
        self, descriptor: Descriptor, partial: Path, on_bytes: BytesFn, what: str
    ) -> hashlib._Hash:
        """Append ``descriptor``'s blob to ``partial`` (resuming it); returns the running hash.

        A dropped connection is retried :data:`TRANSPORT_RETRIES` times, each time from what is
        on disk. The caller checks the digest and size.
        """
        failures = 0
        while True:
            digest, offset = hash_prefix(partial)
            if offset >= descriptor.size:
                return digest
            try:
                return self._blob_from(descriptor, partial, digest, offset, on_bytes, what)
            except PullError as err:
                failures += 1
                if err.permanent or failures > TRANSPORT_RETRIES:
                    raise
                log.warning("%s: %s; retrying (%d/%d)", what, err, failures, TRANSPORT_RETRIES)
                self._abort.check()
                time.sleep(min(0.2 * 2**failures, 2.0))

    def _blob_from(
        self,
        descriptor: Descriptor,
        partial: Path,
        digest: hashlib._Hash,
        offset: int,
        on_bytes: BytesFn,
        what: str,
    ) -> hashlib._Hash:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        with self._get(self._url("blobs", descriptor.digest), headers, what) as response:
            status = response.status_code
            if status == 416:
                partial.unlink(missing_ok=True)
                raise PullError(
                    f"{what} is truncated: the registry has fewer bytes than the manifest lists",
                    permanent=False,
                )
            if status == 200 and offset:
                digest, offset = hashlib.sha256(), 0  # no range support: start over
            elif status not in (200, 206):
                raise _status_error(status, what)
            done = offset
            on_bytes(done)
            with partial.open("ab" if offset else "wb") as out:
                try:
                    for chunk in response.iter_raw():  # as it arrives (≤ 64 KiB pieces)
                        self._abort.check()
                        done += len(chunk)
                        if done > descriptor.size:
                            out.close()
                            partial.unlink(missing_ok=True)
                            raise PullError(
                                f"{what} is larger than its descriptor says "
                                f"({descriptor.size} bytes)",
                                permanent=True,
                            )
                        out.write(chunk)
                        out.flush()  # what is on disk is what a resume after a kill can use
                        digest.update(chunk)
                        on_bytes(done)
                except httpx.HTTPError as err:
                    self._abort.check()
                    raise PullError(
                        f"{what}: connection lost after {done} of {descriptor.size} bytes "
                        f"({type(err).__name__})",
                        permanent=False,
                    ) from err
            if done < descriptor.size:
                raise PullError(
                    f"{what} is truncated: received {done} of {descriptor.size} bytes "
                    "(the partial blob is kept and the next attempt resumes it)",
                    permanent=False,
                )
            return digest


def _read_bounded(response: httpx.Response, limit: int, what: str) -> bytes:
    body = bytearray()
    for chunk in response.iter_bytes(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise PullError(f"{what} is larger than {limit} bytes", permanent=True)
    return bytes(body)
