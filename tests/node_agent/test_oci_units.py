"""OCI pieces without servers: references, manifests, platforms, layer application, capability."""

from __future__ import annotations

import contextlib
import gzip
import json
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_installs.devstack.registry import (
    LAYER_GZIP,
    LAYER_TAR,
    Blob,
    Image,
    config_blob,
    diff_id_of,
    digest_of,
    file_member,
    files_layer,
    tar_layer,
    write_layout,
)
from durable_installs.node_agent import oci
from durable_installs.node_agent.blocking import Abort
from durable_installs.node_agent.capability import detect, detect_hardware
from durable_installs.node_agent.oci import reference
from durable_installs.node_agent.oci.layers import LayerApplier, UnsafeLayer
from durable_installs.node_agent.oci.manifest import (
    MAX_MANIFEST_BYTES,
    ManifestError,
    Platform,
    parse_index,
    parse_manifest,
)
from durable_installs.protocol.gallery import GalleryEntry

DIGEST = "sha256:" + "a" * 64


# --- references --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        (
            "quay.io/go-skynet/local-ai-backends:latest-cpu",
            "quay.io",
            "go-skynet/local-ai-backends",
            "latest-cpu",
            "",
        ),
        (
            "localai/localai-backends:master",
            "registry-1.docker.io",
            "localai/localai-backends",
            "master",
            "",
        ),
        ("docker.io/busybox", "registry-1.docker.io", "library/busybox", "latest", ""),
        ("oci://127.0.0.1:5000/b/echo@" + DIGEST, "127.0.0.1:5000", "b/echo", "", DIGEST),
        ("localhost:5000/echo:v1@" + DIGEST, "localhost:5000", "echo", "v1", DIGEST),
    ],
)
def test_references_are_parsed_like_the_docker_cli(text, registry, repository, tag, digest):
    ref = reference.parse(text)

    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (
        registry,
        repository,
        tag,
        digest,
    )


@pytest.mark.parametrize(
    "text",
    [
        "quay.io/Upper/case:tag",
        "quay.io/a/../b:tag",
        "quay.io/a b:tag",
        "quay.io/a:tag@sha256:short",
        "quay.io/a:bad/tag",
        "evil.io:99999999/a:b",
        "quay.io/" + "a/" * 300 + "b",
        "",
    ],
)
def test_malformed_references_are_refused_before_any_request(text):
    with pytest.raises(reference.InvalidReference):
        reference.parse(text)


def test_only_loopback_registries_are_spoken_to_over_plain_http():
    assert reference.parse("127.0.0.1:5000/a:b").base_url == "http://127.0.0.1:5000"
    assert reference.parse("localhost:5000/a:b").base_url == "http://localhost:5000"
    assert reference.parse("quay.io/a:b").base_url == "https://quay.io"


# --- manifests and platforms -------------------------------------------------------------


def _index(*platforms: dict[str, str]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": "m", "digest": "sha256:" + str(i) * 64, "size": 1, "platform": p}
                for i, p in enumerate(platforms)
            ],
        }
    ).encode()


def test_the_index_entry_of_the_nodes_platform_is_chosen():
    body = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
    )

    assert parse_index(body, Platform("linux", "arm64", "v8")).digest == "sha256:" + "1" * 64
    assert parse_index(body, Platform("linux", "amd64")).digest == "sha256:" + "0" * 64


def test_an_arm64_entry_without_variant_serves_an_arm64_v8_node():
    body = _index({"os": "linux", "architecture": "arm64"})

    assert parse_index(body, Platform("linux", "arm64", "v8")).digest == "sha256:" + "0" * 64


def test_an_index_without_the_nodes_platform_is_refused_naming_the_platform():
    body = _index(
        {"os": "linux", "architecture": "s390x"}, {"os": "windows", "architecture": "amd64"}
    )

    with pytest.raises(ManifestError, match="no manifest for platform linux/amd64"):
        parse_index(body, Platform("linux", "amd64"))


def _manifest(layer_type: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": DIGEST,
                "size": 2,
            },
            "layers": [{"mediaType": layer_type, "digest": DIGEST, "size": 3}],
        }
    ).encode()


def test_a_layer_of_an_unknown_media_type_is_refused_without_echoing_it():
    with pytest.raises(ManifestError, match="layer 1 has an unsupported media type") as err:
        parse_manifest(_manifest("application/x-evil<script>"))

    assert "evil" not in str(err.value)


def test_an_oversized_manifest_is_refused_before_parsing():
    with pytest.raises(ManifestError, match="larger than"):
        parse_manifest(b" " * (MAX_MANIFEST_BYTES + 1))


# --- layers ------------------------------------------------------------------------------


def _apply(root: Path, tmp_path: Path, *layers, limit: int = 1 << 30) -> LayerApplier:
    applier = LayerApplier(root, limit=limit, abort=Abort())
    for position, layer in enumerate(layers, start=1):
        blob = tmp_path / f"layer{position}"
        blob.write_bytes(layer.data)
        applier.apply(blob, lambda _: None, f"layer {position}/{len(layers)}")
    return applier


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _member(
    name: str, kind: bytes = tarfile.REGTYPE, **attrs
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, (b"x" if kind == tarfile.REGTYPE else None)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "backends" / "img.install-tmp"
    path.mkdir(parents=True)
    return path


def test_a_whiteout_deletes_the_lower_layers_file(root, tmp_path):
    lower = tar_layer([file_member("run.sh", b"a"), file_member("lib/old.so", b"b")])
    upper = tar_layer([file_member("lib/.wh.old.so", b"")])

    _apply(root, tmp_path, lower, upper)

    assert _tree(root) == {"run.sh", "lib"}


def test_an_opaque_whiteout_empties_the_directory_but_keeps_its_own_layers_files(root, tmp_path):
    lower = tar_layer([file_member("lib/a", b"a"), file_member("lib/b", b"b")])
    upper = tar_layer([file_member("lib/c", b"c"), file_member("lib/.wh..wh..opq", b"")])

    _apply(root, tmp_path, lower, upper)

    assert _tree(root) == {"lib", "lib/c"}


def test_a_file_of_an_upper_layer_replaces_a_directory_of_a_lower_one(root, tmp_path):
    lower = tar_layer([file_member("thing/inner", b"a")])
    upper = tar_layer([file_member("thing", b"now a file")])

    _apply(root, tmp_path, lower, upper)

    assert (root / "thing").read_bytes() == b"now a file"


def test_setuid_and_setgid_bits_are_not_kept(root, tmp_path):
    layer = tar_layer([file_member("run.sh", b"#!/bin/sh\n", mode=0o6755)])

    _apply(root, tmp_path, layer)

    assert (root / "run.sh").stat().st_mode & 0o7777 == 0o755


@pytest.mark.parametrize(
    ("member", "cause"),
    [
        (_member("/etc/evil"), "absolute path"),
        (_member("a/../../evil"), r"contains '\.\.'"),
        (_member("link", tarfile.SYMTYPE, linkname="../../outside"), "symlink points outside"),
        (_member("link", tarfile.SYMTYPE, linkname="/etc/passwd"), "symlink points outside"),
        (_member("hard", tarfile.LNKTYPE, linkname="../outside"), "hard link points outside"),
        (_member("dev", tarfile.CHRTYPE, devmajor=1, devminor=3), "device file"),
        (_member("fifo", tarfile.FIFOTYPE), "device file or FIFO"),
        (_member("a/.wh...", tarfile.REGTYPE), "a whiteout has an invalid name"),
    ],
)
def test_hostile_members_refuse_the_layer_and_write_nothing_outside(root, tmp_path, member, cause):
    layer = tar_layer([file_member("run.sh", b"ok"), member])

    with pytest.raises(UnsafeLayer, match=cause) as err:
        _apply(root, tmp_path, layer)

    assert str(err.value).startswith("layer 1/1: ")
    assert not (tmp_path / "outside").exists() and not (tmp_path / "backends" / "evil").exists()


def test_a_symlinked_directory_of_a_lower_layer_cannot_redirect_a_later_link(root, tmp_path):
    # lexically "a/b -> ../x" stays inside; on disk "a" is the root, so it would leave it
    lower = tar_layer([_member("a", tarfile.SYMTYPE, linkname=".")])
    upper = tar_layer([_member("a/b", tarfile.SYMTYPE, linkname="../x")])

    with pytest.raises(UnsafeLayer, match="layer 2/2: a member would be written outside"):
        _apply(root, tmp_path, lower, upper)

    assert not (root / "b").is_symlink()


def test_the_uncompressed_size_is_bounded_over_all_layers(root, tmp_path):
    first = tar_layer([file_member("a", b"0" * 600)])
    second = tar_layer([file_member("b", b"0" * 600)])

    with pytest.raises(UnsafeLayer, match="uncompressed image size exceeds the configured limit"):
        _apply(root, tmp_path, first, second, limit=1000)


def test_a_layer_that_is_not_a_tar_is_refused(root, tmp_path):
    blob = tmp_path / "garbage"
    blob.write_bytes(b"\x1f\x8b not really gzip")

    with pytest.raises(UnsafeLayer, match="not a valid tar layer"):
        LayerApplier(root, limit=1 << 20, abort=Abort()).apply(blob, lambda _: None, "layer 1/1")


def _padded_layer(trailer: int, *, compress: bool) -> tuple[Blob, bytes]:
    """A layer whose tar has ``trailer`` zero bytes after its end-of-archive blocks (as a
    large blocking factor writes); returns the blob and its uncompressed tar."""
    tar = tar_layer([file_member("run.sh", b"#!/bin/sh\n")], compress=False).data + bytes(trailer)
    return (Blob(LAYER_GZIP, gzip.compress(tar)) if compress else Blob(LAYER_TAR, tar)), tar


@pytest.mark.parametrize("compress", [True, False])
def test_a_layers_diff_id_is_the_digest_of_its_whole_uncompressed_tar(root, tmp_path, compress):
    layer, tar = _padded_layer(64 * 1024, compress=compress)  # tarfile stops before the tail
    blob = tmp_path / "layer"
    blob.write_bytes(layer.data)

    diff_id = LayerApplier(root, limit=1 << 20, abort=Abort()).apply(
        blob, lambda _: None, "layer 1/1"
    )

    assert diff_id == digest_of(tar) == diff_id_of(layer)
    assert _tree(root) == {"run.sh"}


def test_a_layer_with_a_long_tail_after_its_end_of_archive_is_refused(root, tmp_path):
    layer, _ = _padded_layer(2 * 1024 * 1024, compress=True)  # a small blob, a long hash
    blob = tmp_path / "layer"
    blob.write_bytes(layer.data)

    with pytest.raises(UnsafeLayer, match="layer 1/1: more than 1048576 bytes follow the end"):
        LayerApplier(root, limit=1 << 30, abort=Abort()).apply(blob, lambda _: None, "layer 1/1")


# --- image configs -----------------------------------------------------------------------

OPTIONS = oci.PullOptions(max_download_bytes=1 << 30, max_unpacked_bytes=1 << 30, timeout=30.0)
LAYERS = [
    files_layer({"lib/a.so": (b"a", 0o755)}),
    files_layer({"run.sh": (b"#!/bin/sh\n", 0o755)}),
]


def _pull_layout(tmp_path: Path, config: Blob) -> tuple[oci.PullError, Path]:
    """Pull an ``ocifile://`` image of :data:`LAYERS` and ``config``; returns the refusal."""
    layout = tmp_path / "image.tar"
    write_layout(layout, Image(layers=LAYERS, config=config))
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(oci.PullError) as err:
        oci.pull(
            f"ocifile://{layout}", staging, tmp_path / "work", OPTIONS, lambda _: None, Abort()
        )
    assert not (tmp_path / "work").exists()
    return err.value, staging


@pytest.mark.parametrize("described", [1, 3])
def test_a_config_whose_diff_ids_do_not_count_the_layers_is_refused(tmp_path, described):
    config = config_blob([LAYERS[0]] * described)

    err, staging = _pull_layout(tmp_path, config)

    assert err.permanent
    assert err.cause == f"image config lists {described} diff_ids but the manifest lists 2 layers"
    assert list(staging.iterdir()) == []  # refused before any layer is applied


@pytest.mark.parametrize(
    "rootfs",
    [None, {"type": "layers"}, {"type": "layers", "diff_ids": ["sha256:short", DIGEST]}],
)
def test_a_config_without_valid_diff_ids_is_refused(tmp_path, rootfs):
    body = {"architecture": "amd64", "os": "linux", "rootfs": rootfs}
    config = Blob("application/vnd.oci.image.config.v1+json", json.dumps(body).encode())

    err, _ = _pull_layout(tmp_path, config)

    assert err.permanent and err.cause == "image config has no valid rootfs.diff_ids"


_NAMES = st.lists(
    st.sampled_from(["a", "b", "..", ".", "", "/", ".wh.a", ".wh..wh..opq", "/etc", "x y"]),
    min_size=1,
    max_size=5,
).map("/".join)
_KINDS = st.sampled_from([tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_NAMES, _KINDS, _NAMES), min_size=1, max_size=6))
def test_no_sequence_of_members_writes_outside_the_root(tmp_path_factory, members):
    base = tmp_path_factory.mktemp("hostile")
    root = base / "root"
    root.mkdir()
    built = []
    for name, kind, link in members:
        info, content = _member(name or "z", kind)
        info.linkname = link
        built.append((info, content))
    with contextlib.suppress(UnsafeLayer):
        _apply(root, base, tar_layer(built))
    outside = {p for p in base.rglob("*") if not p.is_relative_to(root)}
    assert {p.name for p in outside} <= {"layer1"}


# --- capability --------------------------------------------------------------------------


def _card(root: Path, vendor: str, vram: int | None = None, n: int = 0) -> None:
    device = root / f"sys/class/drm/card{n}/device"
    device.mkdir(parents=True)
    (device / "vendor").write_text(vendor + "\n")
    if vram is not None:
        (device / "mem_info_vram_total").write_text(f"{vram}\n")


def test_a_machine_without_gpus_is_default(tmp_path):
    assert detect_hardware(tmp_path, "x86_64", "Linux") == "default"


def test_nvidia_is_seen_from_the_driver_and_its_cuda_directory(tmp_path):
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text("NVRM version: 550\n")
    assert detect_hardware(tmp_path, "x86_64", "Linux") == "nvidia"
    assert detect_hardware(tmp_path, "aarch64", "Linux") == "nvidia-l4t"
    (tmp_path / "usr/local/cuda-12").mkdir(parents=True)
    assert detect_hardware(tmp_path, "x86_64", "Linux") == "nvidia-cuda-12"


def test_amd_and_intel_gpus_are_seen_from_drm_and_small_ones_are_default(tmp_path):
    _card(tmp_path, "0x1002", vram=16 << 30)
    assert detect_hardware(tmp_path, "x86_64", "Linux") == "amd"
    small = tmp_path / "small"
    _card(small, "0x1002", vram=2 << 30)
    assert detect_hardware(small, "x86_64", "Linux") == "default"
    integrated = tmp_path / "integrated"
    _card(integrated, "0x8086")
    assert detect_hardware(integrated, "x86_64", "Linux") == "default"


def test_apple_machines_are_metal_or_darwin_x86(tmp_path):
    assert detect_hardware(tmp_path, "arm64", "Darwin") == "metal"
    assert detect_hardware(tmp_path, "x86_64", "Darwin") == "darwin-x86"


def test_the_environment_beats_the_capability_file_which_beats_detection(tmp_path):
    _card(tmp_path, "0x1002", vram=16 << 30)
    (tmp_path / "run/localai").mkdir(parents=True)
    assert detect(tmp_path, {}) == "amd"
    (tmp_path / "run/localai/capability").write_text("intel\n")
    assert detect(tmp_path, {}) == "intel"
    assert detect(tmp_path, {"LOCALAI_FORCE_META_BACKEND_CAPABILITY": "nvidia"}) == "nvidia"


@pytest.mark.parametrize(
    ("uri", "fallbacks"),
    [
        (
            "quay.io/go-skynet/local-ai-backends:latest-cpu-llama-cpp",
            (
                "quay.io/go-skynet/local-ai-backends:master-cpu-llama-cpp",
                "quay.io/go-skynet/local-ai-backends:master-cpu-llama-cpp-development",
            ),
        ),
        (
            "quay.io/a/b:latest-x-latest-y",
            ("quay.io/a/b:master-x-latest-y", "quay.io/a/b:master-x-latest-y-development"),
        ),
        ("quay.io/go-skynet/local-ai-backends:v3.1.0-cpu-llama-cpp", ()),
        ("", ()),
    ],
)
def test_a_released_image_falls_back_to_its_development_build_as_in_localai(
    uri: str, fallbacks: tuple[str, ...]
) -> None:
    entry = GalleryEntry(name="x", uri=uri, mirrors=["mirror.example/x:1"])
    assert entry.sources() == tuple(s for s in (uri, "mirror.example/x:1", *fallbacks) if s)
