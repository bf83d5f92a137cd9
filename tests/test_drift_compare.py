"""How one installed backend compares with its gallery entry (``activities.fleet.compare``)."""

from __future__ import annotations

from typing import Any

import pytest

from activities.fleet import compare
from durable_installs.contracts.drift import DriftCheckInput, DriftState
from durable_installs.protocol.gallery import GalleryEntry
from durable_installs.protocol.messages import GalleryConfig, NodeBackendInfo

IMAGE = "quay.io/go-skynet/local-ai-backends"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64


def entry(**fields: Any) -> GalleryEntry:
    return GalleryEntry(name="cpu-echo", **fields)


def installed(**fields: Any) -> NodeBackendInfo:
    return NodeBackendInfo(name="cpu-echo", **fields)


@pytest.mark.parametrize(
    ("node", "gallery", "state"),
    [
        (installed(version="1.0"), entry(version="1.0", uri="u"), DriftState.UP_TO_DATE),
        (installed(version="1.0"), entry(version="2.0", uri="u"), DriftState.OUTDATED),
        (installed(version="1.0", uri="old"), entry(version="1.0", uri="new"), DriftState.OUTDATED),
        (
            installed(version="1.0", uri="mirror"),
            entry(version="1.0", uri="new", mirrors=["mirror"]),
            DriftState.UP_TO_DATE,
        ),
        (installed(uri="old"), entry(uri="new"), DriftState.OUTDATED),
        (
            installed(version="1.0", uri=f"{IMAGE}:master-cpu-echo"),
            entry(version="1.0", uri=f"{IMAGE}:latest-cpu-echo"),
            DriftState.UP_TO_DATE,
        ),
        (
            installed(uri=f"{IMAGE}@{DIGEST_A}", digest=DIGEST_A),
            entry(uri=f"{IMAGE}@{DIGEST_A}"),
            DriftState.UP_TO_DATE,
        ),
        (
            installed(uri=f"{IMAGE}:latest", digest=DIGEST_A),
            entry(uri=f"{IMAGE}:latest"),
            DriftState.UNKNOWN,
        ),
        (
            installed(uri="u", digest=DIGEST_A),
            entry(uri="u", sha256="a" * 64),
            DriftState.UP_TO_DATE,
        ),
        (installed(uri="u", digest=DIGEST_A), entry(uri="u", sha256="b" * 64), DriftState.OUTDATED),
        (installed(), entry(version="2.0", uri="u"), DriftState.UNKNOWN),
        (installed(version="1.0"), None, DriftState.NOT_IN_GALLERY),
    ],
    ids=[
        "same-version",
        "other-version",
        "same-version-other-source",
        "same-version-from-a-mirror",
        "no-version-source-moved",
        "same-version-from-the-development-fallback",
        "pinned-digest-matches",
        "mutable-tag-no-version",
        "archive-sha-matches",
        "archive-sha-differs",
        "stock-worker-without-metadata",
        "no-entry",
    ],
)
def test_an_installed_backend_is_classified_against_the_gallery(
    node: NodeBackendInfo, gallery: GalleryEntry | None, state: DriftState
) -> None:
    result = compare(node, gallery)

    assert result.state is state
    assert result.reason


def test_a_drift_input_names_every_invalid_field_without_echoing_values() -> None:
    secret = "x" * 300
    input = DriftCheckInput(
        backend_galleries=[GalleryConfig(name="g", url="file:///i.yaml")],
        nodes=["a.b", secret],
        backends=[""],
        upgrade_options={"targets": []},
        request_timeout_seconds=float("nan"),
    )

    message = input.describe_problems()

    for field in ("nodes[0]", "nodes[1]", "backends[0]", "upgrade_options", "request_timeout"):
        assert field in message
    assert secret not in message


def test_a_drift_input_needs_a_gallery() -> None:
    assert (
        "backend_galleries: it is empty"
        in DriftCheckInput(backend_galleries=[]).describe_problems()
    )
