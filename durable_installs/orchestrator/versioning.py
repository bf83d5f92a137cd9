"""Worker Deployment Versioning for the worker: which version it is, and making it current.

A versioned worker polls as one *version* (deployment name + build id) of a Worker
Deployment. Temporal sends a new workflow to the deployment's *current* version, and keeps
every task of a PINNED workflow (``InstallBackendWorkflow``, ``RolloutBackendWorkflow``) on the
version that started it, so an install that runs for hours finishes on the code that started
it while new installs go to the new code. A version receives new workflows only once it is
current: :func:`make_current` does that on start-up according to :class:`SetCurrent`, or the
operator does it with ``temporal worker deployment set-current-version``.
"""

from __future__ import annotations

import enum
import hashlib
import importlib
import importlib.metadata
import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

from temporalio.api.workflowservice.v1 import (
    DescribeWorkerDeploymentRequest,
    SetWorkerDeploymentCurrentVersionRequest,
)
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

DEFAULT_DEPLOYMENT_NAME = "backend-install"
PACKAGE = "durable-backend-installs"
MAX_NAME_LENGTH = 255
"""Temporal's bound on deployment names and build ids."""

SOURCE_MODULES = (
    "worker_main",
    "workflows",
    "activities",
    "durable_installs.orchestrator",
    "durable_installs.contracts",
    "durable_installs.protocol",
)
"""The code a worker runs for workflows and activities; hashed when git cannot name it."""

ROOT = Path(__file__).resolve().parents[2]
log = logging.getLogger(__name__)


class VersioningError(Exception):
    """The worker cannot run as the configured version; the message says what to do."""


class SetCurrent(enum.StrEnum):
    """When a starting worker makes its own version the deployment's current one."""

    IF_UNSET = "if-unset"
    """Only when the deployment has no current version yet: the very first deployment (or a
    fresh dev server) works without a manual step, and every later version waits for the
    operator, who decides when new installs move to it."""
    ALWAYS = "always"
    """Every start: the newest worker takes all new workflows (the dev stack, whose single
    worker must receive the work whatever ran before)."""
    NEVER = "never"
    """Routing is left to the operator or a deployment controller."""


@dataclass(frozen=True)
class Versioning:
    """The version this worker polls as and whether it makes itself current."""

    deployment_name: str = DEFAULT_DEPLOYMENT_NAME
    build_id: str = ""
    set_current: SetCurrent = SetCurrent.IF_UNSET

    def __post_init__(self) -> None:
        check_name(
            "deployment name (--deployment-name, TEMPORAL_DEPLOYMENT_NAME)",
            self.deployment_name,
            dot=False,
        )
        check_name("build id (--build-id, TEMPORAL_WORKER_BUILD_ID)", self.build_id, dot=True)

    @property
    def version(self) -> WorkerDeploymentVersion:
        return WorkerDeploymentVersion(self.deployment_name, self.build_id)

    def __str__(self) -> str:
        return f"{self.deployment_name}:{self.build_id}"

    def deployment_config(self, behavior: VersioningBehavior) -> WorkerDeploymentConfig:
        """The SDK's config, ``behavior`` applying to every workflow type of the worker."""
        return WorkerDeploymentConfig(
            version=self.version, use_worker_versioning=True, default_versioning_behavior=behavior
        )


def check_name(field: str, value: str, *, dot: bool) -> None:
    """A deployment name or build id: non-empty, bounded, printable, without spaces.

    A deployment name has no ``.``: Temporal's canonical version string is
    ``<deployment>.<build id>`` and splits at the first dot.
    """
    if not value:
        raise ValueError(f"{field} must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ValueError(f"{field} is {len(value)} characters long, at most {MAX_NAME_LENGTH}")
    if not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"{field} must not contain spaces or control characters")
    if not dot and "." in value:
        raise ValueError(f"{field} must not contain '.'")


def default_build_id(root: Path = ROOT) -> str:
    """``<package version>+<git commit>``, so every commit is its own version.

    Uncommitted changes to tracked files add ``.dirty.<hash of the diff>``: two different
    edits of the same commit never share a build id. Without git (an installed wheel, no
    ``git`` on PATH) a hash of the worker's own sources stands in for the commit. CI and
    release pipelines should pass their own id (``--build-id``/``TEMPORAL_WORKER_BUILD_ID``).
    """
    version = package_version()
    commit = git_commit(root)
    if commit is not None:
        return f"{version}+{commit}"
    return f"{version}+src.{source_digest()}"


def package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def git_commit(root: Path) -> str | None:
    """The short commit of ``root``'s checkout, with a diff hash when it has local changes."""
    head = _git(root, "rev-parse", "--short=12", "HEAD")
    if head is None:
        return None
    commit = head.decode().strip()
    diff = _git(root, "diff", "HEAD", "--binary", "--no-ext-diff")
    if diff:
        commit += f".dirty.{hashlib.sha256(diff).hexdigest()[:8]}"
    return commit


def _git(root: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def source_digest() -> str:
    """A short hash of the worker's Python sources, in a stable order."""
    digest = hashlib.sha256()
    for name in SOURCE_MODULES:
        module_file = importlib.import_module(name).__file__
        if module_file is None:
            continue
        path = Path(module_file)
        files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
        for file in files:
            digest.update(f"{name}/{file.relative_to(path.parent).as_posix()}\0".encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


async def make_current(client: Client, versioning: Versioning, identity: str) -> None:
    """Make this worker's version current per ``versioning.set_current``; call once polling.

    ``if-unset`` passes the conflict token of the description it decided on, so two workers
    starting at once cannot both replace a current version one of them did not see.
    Raises :class:`VersioningError` with the manual command when the server refuses.
    """
    if versioning.set_current is SetCurrent.NEVER:
        return
    try:
        current, token = await _current_build_id(client, versioning.deployment_name)
    except RPCError as err:
        raise VersioningError(_refused("could not describe", versioning, err)) from err
    if current == versioning.build_id:
        log.info("version %s is the deployment's current version", versioning)
        return
    if current and versioning.set_current is SetCurrent.IF_UNSET:
        log.warning(
            "version %s is not current (current build id %s): it receives no new workflows "
            "until made current: %s",
            versioning,
            current,
            set_current_command(versioning),
        )
        return
    try:
        await client.workflow_service.set_worker_deployment_current_version(
            SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace,
                deployment_name=versioning.deployment_name,
                build_id=versioning.build_id,
                conflict_token=token if versioning.set_current is SetCurrent.IF_UNSET else b"",
                identity=identity,
                # This worker polls already; the server may simply not have counted it yet.
                allow_no_pollers=True,
            )
        )
    except RPCError as err:
        raise VersioningError(_refused("could not make current", versioning, err)) from err
    log.info("made version %s current (was %s)", versioning, current or "none")


async def warn_if_routed_to_a_version(client: Client, deployment_name: str) -> None:
    """For an unversioned worker: warn when the deployment routes new work to a version.

    Unversioned workers then receive nothing on the deployment's task queues, a silent stall
    after turning versioning off. Servers without worker deployments say nothing here.
    """
    try:
        current, _ = await _current_build_id(client, deployment_name)
    except RPCError:
        return
    if current:
        log.warning(
            "deployment %s routes new workflows to build id %s, not to unversioned workers "
            "like this one; to route them here: temporal worker deployment "
            "set-current-version --deployment-name %s --unversioned",
            deployment_name,
            current,
            deployment_name,
        )


async def _current_build_id(client: Client, deployment_name: str) -> tuple[str, bytes]:
    """The deployment's current build id ("" for none) and the description's conflict token."""
    try:
        described = await client.workflow_service.describe_worker_deployment(
            DescribeWorkerDeploymentRequest(
                namespace=client.namespace, deployment_name=deployment_name
            )
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return "", b""
        raise
    routing = described.worker_deployment_info.routing_config
    return routing.current_deployment_version.build_id, described.conflict_token


def set_current_command(versioning: Versioning) -> str:
    return (
        "temporal worker deployment set-current-version "
        f"--deployment-name {versioning.deployment_name} --build-id {versioning.build_id}"
    )


def _refused(what: str, versioning: Versioning, err: RPCError) -> str:
    hint = (
        "the server does not support worker deployments: run with --no-versioning"
        if err.status == RPCStatusCode.UNIMPLEMENTED
        else f"run with --set-current never and use: {set_current_command(versioning)}"
    )
    return f"{what} worker deployment version {versioning} ({err.status.name}: {err}); {hint}"
