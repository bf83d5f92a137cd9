"""The pull itself against a real registry: resuming a partial blob, progress per layer."""

from __future__ import annotations

import random
from pathlib import Path

from durable_installs.devstack.registry import Image, Pusher, files_layer
from durable_installs.node_agent import oci
from durable_installs.node_agent.blocking import Abort
from durable_installs.servers import RunningRegistry
from tests.registry import pusher, registry

__all__ = ["pusher", "registry"]

OPTIONS = oci.PullOptions(max_download_bytes=1 << 30, max_unpacked_bytes=1 << 30, timeout=30.0)


def _image(seed: str, sizes: list[int]) -> Image:
    rng = random.Random(seed)
    layers = [
        files_layer({f"part{i}.bin": (rng.randbytes(size), 0o644)}) for i, size in enumerate(sizes)
    ]
    layers.append(files_layer({"run.sh": (b"#!/bin/sh\n", 0o755)}))
    return Image(layers=layers)


def test_an_interrupted_blob_is_resumed_from_its_partial_file(
    registry: RunningRegistry, pusher: Pusher, tmp_path: Path
) -> None:
    image = _image("resume", [512 * 1024])
    pusher.image("pull/resume", "v1", image)
    layer = image.layers[0]
    work = tmp_path / "work"
    work.mkdir()
    kept = len(layer.data) // 2
    (work / f"{str(layer.descriptor()['digest']).split(':')[1]}.partial").write_bytes(
        layer.data[:kept]
    )
    seen: list[oci.PullProgress] = []
    staging = tmp_path / "staging"
    staging.mkdir()

    oci.pull(f"{registry.host}/pull/resume:v1", staging, work, OPTIONS, seen.append, Abort())

    first = next(p for p in seen if p.phase == "download" and p.layer == 1)
    assert first.done == kept  # counted from what was on disk, not from zero
    assert (staging / "part0.bin").stat().st_size == 512 * 1024
    assert not work.exists()


def test_progress_covers_every_layer_with_one_total_for_the_image(
    registry: RunningRegistry, pusher: Pusher, tmp_path: Path
) -> None:
    image = _image("progress", [300 * 1024, 200 * 1024])
    pusher.image("pull/progress", "v1", image)
    seen: list[oci.PullProgress] = []
    staging = tmp_path / "staging"
    staging.mkdir()

    oci.pull(
        f"{registry.host}/pull/progress:v1", staging, tmp_path / "w", OPTIONS, seen.append, Abort()
    )

    total = sum(len(layer.data) for layer in image.layers)
    downloads = [p for p in seen if p.phase == "download"]
    assert {p.layer for p in downloads} == {1, 2, 3}
    assert {p.total for p in seen} == {total} and {p.layers for p in seen} == {3}
    assert [p.done for p in downloads] == sorted(p.done for p in downloads)
    assert downloads[-1].done == total and seen[-1] == oci.PullProgress(
        "extract", 3, 3, total, total
    )


def test_a_failed_pull_keeps_verified_blobs_for_the_next_attempt(
    registry: RunningRegistry, pusher: Pusher, tmp_path: Path
) -> None:
    image = _image("keep", [100 * 1024])
    pusher.image("pull/keep", "v1", image)
    second = image.layers[1].descriptor()["digest"]
    registry.blob_file(str(second)).write_bytes(b"short")  # the second layer comes up truncated
    work = tmp_path / "work"
    staging = tmp_path / "staging"
    staging.mkdir()

    try:
        oci.pull(f"{registry.host}/pull/keep:v1", staging, work, OPTIONS, lambda _: None, Abort())
    except oci.PullError as err:
        assert not err.permanent and " is truncated: " in err.cause
    else:
        raise AssertionError("the truncated layer must fail the pull")

    first = str(image.layers[0].descriptor()["digest"]).split(":")[1]
    assert (work / first).is_file()  # verified and kept: the next attempt does not fetch it again
