"""Bad images and bad registries: a clear error naming the image and the cause, nothing written
outside the backends directory, and the agent keeps serving."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from durable_installs.contracts.failures import (
    INSTALL_FAILED,
    INSTALL_REJECTED,
    classify_node_error,
)
from durable_installs.devstack.registry import (
    Blob,
    Image,
    Pusher,
    backend_image,
    config_blob,
    files_layer,
    tar_layer,
)
from durable_installs.devstack.sample_backend import SampleBackend
from durable_installs.node_agent import backend_rpc
from durable_installs.servers import RunningRegistry, free_port, registry_server
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import NodeClient
from tests.registry import RegistryFront, pusher, registry

__all__ = ["pusher", "registry"]

GALLERY = "installing backend from gallery: "


def _rejected(ref: str, cause: str) -> str:
    return f'{GALLERY}rejected OCI image "{ref}": {cause}'


def _outside(tmp_path: Path, node: NodeClient) -> list[Path]:
    """Files of tmp_path outside the backends dir, the gallery and the registry's storage."""
    allowed = (node.backends_dir, tmp_path / "gallery", tmp_path / "registry", tmp_path / "auth")
    return [
        p
        for p in tmp_path.rglob("*")
        if p.is_file() and not any(p.is_relative_to(a) for a in allowed)
    ]


async def _still_serves(node: NodeClient, registry: RunningRegistry, pusher: Pusher) -> None:
    """The agent installs and runs a good image after the bad one."""
    pusher.image("backends/good", "v1", backend_image(SampleBackend("good", version="ok")))
    node.gallery.add({"name": "cpu-good", "uri": f"{registry.host}/backends/good:v1"})
    reply = await node.install("cpu-good", model_id="after")
    assert reply.success, reply.error
    assert await backend_rpc.health(reply.address)
    assert node.staging_leftovers() == []


async def _install_ref(node: NodeClient, name: str, ref: str) -> str:
    node.gallery.add({"name": name, "uri": ref})
    reply = await node.install(name)
    assert not reply.success
    return reply.error


async def test_a_blob_whose_content_does_not_match_its_digest_is_rejected(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher, tmp_path: Path
) -> None:
    image = backend_image(SampleBackend("t", version="tampered"))
    pusher.image("backends/tampered", "v1", image)
    data = registry.blob_file(str(image.layers[0].descriptor()["digest"]))
    data.write_bytes(bytes(b ^ 0xFF for b in data.read_bytes()))  # same size, other bytes
    ref = f"{registry.host}/backends/tampered:v1"

    error = await _install_ref(node, "cpu-tampered", ref)

    assert error.startswith(_rejected(ref, "layer 1/2 (sha256:"))
    assert "digest mismatch" in error
    assert classify_node_error(error) == INSTALL_REJECTED
    assert not list((node.backends_dir / ".downloads").glob("oci-*"))
    assert _outside(tmp_path, node) == []
    await _still_serves(node, registry, pusher)


async def test_a_layer_that_unpacks_to_another_tar_than_its_diff_id_is_rejected(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher, tmp_path: Path
) -> None:
    """Blob and descriptor agree, but the config's diff_id describes another second layer."""
    base = backend_image(SampleBackend("d", version="diff"))
    program, run = base.layers
    notes = files_layer({"notes.txt": (b"the layer the manifest lists", 0o644)})
    other = files_layer({"notes.txt": (b"the layer the config describes", 0o644)})
    config = config_blob([program, other, run])
    pusher.image("backends/diff", "v1", Image(layers=[program, notes, run], config=config))
    ref = f"{registry.host}/backends/diff:v1"

    error = await _install_ref(node, "cpu-diff", ref)

    assert error == _rejected(ref, "layer 2/3 does not match the image config's diff_id")
    assert classify_node_error(error) == INSTALL_REJECTED
    assert not (node.backends_dir / "cpu-diff").exists()
    assert node.staging_leftovers() == []
    assert not list((node.backends_dir / ".downloads").glob("oci-*"))
    assert _outside(tmp_path, node) == []
    assert "cpu-diff" not in {row.name for row in (await node.listing()).backends or []}
    await _still_serves(node, registry, pusher)


async def test_a_truncated_blob_is_a_transient_failure_naming_the_image(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    image = backend_image(SampleBackend("t", version="truncated", padding_bytes=64 * 1024))
    pusher.image("backends/truncated", "v1", image)
    data = registry.blob_file(str(image.layers[0].descriptor()["digest"]))
    data.write_bytes(data.read_bytes()[:1000])
    ref = f"{registry.host}/backends/truncated:v1"

    error = await _install_ref(node, "cpu-truncated", ref)

    assert error.startswith(f'{GALLERY}failed to download backend "{ref}": ')
    assert f'failed to pull OCI image "{ref}": layer 1/2' in error and " is truncated: " in error
    assert classify_node_error(error) == INSTALL_FAILED
    await _still_serves(node, registry, pusher)


async def test_a_layer_of_an_unknown_media_type_is_rejected(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    base = backend_image(SampleBackend("z"))
    zstd = Blob("application/vnd.oci.image.layer.v1.tar+zstd", b"(\xb5/\xfd not really zstd")
    pusher.image("backends/zstd", "v1", Image(layers=[*base.layers, zstd]))
    ref = f"{registry.host}/backends/zstd:v1"

    error = await _install_ref(node, "cpu-zstd", ref)

    assert error == _rejected(
        ref, "layer 3 has an unsupported media type (supported: tar and tar+gzip layers)"
    )
    assert classify_node_error(error) == INSTALL_REJECTED


async def test_an_index_without_this_nodes_platform_is_rejected(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    image = backend_image(SampleBackend("s"), architecture="s390x")
    pusher.multi_platform(
        "backends/s390x", "v1", [(image, {"os": "linux", "architecture": "s390x"})]
    )
    ref = f"{registry.host}/backends/s390x:v1"

    error = await _install_ref(node, "cpu-s390x", ref)

    assert error.startswith(_rejected(ref, "image index has no manifest for platform linux/"))
    assert classify_node_error(error) == INSTALL_REJECTED


async def test_a_missing_tag_is_rejected_as_not_found(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    ref = f"{registry.host}/backends/nothing:v9"

    error = await _install_ref(node, "cpu-nothing", ref)

    assert error == _rejected(ref, "manifest v9: not found in the registry (HTTP 404)")
    assert classify_node_error(error) == INSTALL_REJECTED
    await _still_serves(node, registry, pusher)


async def test_a_hostile_layer_is_rejected_and_writes_nothing_outside(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher, tmp_path: Path
) -> None:
    base = backend_image(SampleBackend("h"))
    escape = tarfile.TarInfo("lib")
    escape.type, escape.linkname = tarfile.SYMTYPE, str(tmp_path)
    payload = tarfile.TarInfo("lib/escaped.txt")
    hostile = tar_layer([(escape, None), (payload, b"pwned")])
    pusher.image("backends/hostile", "v1", Image(layers=[*base.layers, hostile]))
    ref = f"{registry.host}/backends/hostile:v1"

    error = await _install_ref(node, "cpu-hostile", ref)

    assert error == _rejected(ref, "layer 3/3: a symlink points outside the image")
    assert classify_node_error(error) == INSTALL_REJECTED
    assert _outside(tmp_path, node) == []
    await _still_serves(node, registry, pusher)


async def test_an_image_over_the_unpacked_size_limit_is_rejected(
    start_agent: AgentFactory, registry: RunningRegistry, pusher: Pusher
) -> None:
    node = await start_agent(max_unpacked_bytes=1024 * 1024)
    bomb = Image(layers=[tar_layer([(tarfile.TarInfo("zeros"), bytes(2 * 1024 * 1024))])])
    pusher.image("backends/bomb", "v1", bomb)
    ref = f"{registry.host}/backends/bomb:v1"

    error = await _install_ref(node, "cpu-bomb", ref)

    assert error == _rejected(
        ref, "uncompressed image size exceeds the configured limit of 1048576 bytes"
    )
    assert classify_node_error(error) == INSTALL_REJECTED


async def test_a_malformed_reference_in_a_request_is_rejected_at_once(
    start_agent: AgentFactory,
) -> None:
    node = await start_agent(allow_request_uris=("oci://quay.io/",))

    reply = await node.install("x", uri="oci://quay.io/UPPER/case:tag", name="x")

    assert reply.error == _rejected(
        "oci://quay.io/UPPER/case:tag",
        "invalid image reference: invalid repository name (lowercase letters, digits, . _ - and /)",
    )


async def test_a_requested_registry_image_needs_a_name(start_agent: AgentFactory) -> None:
    node = await start_agent(allow_request_uris=("oci://quay.io/",))

    reply = await node.install("x", uri="oci://quay.io/a/b:c")

    assert reply.error == (
        f"{GALLERY}error installing backend oci://quay.io/a/b:c: "
        "specifying a name is required for OCI images"
    )


async def test_a_rate_limited_registry_is_a_transient_failure(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    with RegistryFront(registry.url, "429") as front:
        ref = f"{front.host}/backends/echo:v1"
        error = await _install_ref(node, "cpu-limited", ref)

    assert error == (
        f'{GALLERY}failed to download backend "{ref}": failed to pull OCI image "{ref}": '
        "manifest v1: the registry is rate limiting this node (HTTP 429 too many requests)"
    )
    assert classify_node_error(error) == INSTALL_FAILED
    await _still_serves(node, registry, pusher)


async def test_a_bearer_token_registry_is_pulled_with_a_token_from_its_realm(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    pusher.image("backends/echo", "v1", backend_image(SampleBackend("b", version="bearer")))
    with RegistryFront(registry.url, "bearer") as front:
        node.gallery.add({"name": "cpu-bearer", "uri": f"{front.host}/backends/echo:v1"})
        reply = await node.install("cpu-bearer")

    assert reply.success, reply.error
    assert node.installed_version("cpu-bearer") == "bearer"
    assert front.token_requests[0] == {"service": "front", "scope": "repository:backends/echo:pull"}


# --- a registry with Basic auth ----------------------------------------------------------


@pytest.fixture(scope="module")
def auth_registry(
    tmp_path_factory: pytest.TempPathFactory, registry: RunningRegistry
) -> Iterator[tuple[RunningRegistry, Pusher]]:
    """A second registry that requires ``agent:s3cret`` (bcrypt htpasswd)."""
    base = tmp_path_factory.mktemp("auth-registry")
    htpasswd = base / "htpasswd"
    htpasswd.write_text("agent:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode() + "\n")
    with registry_server(base / "storage", htpasswd=htpasswd) as running:
        client = Pusher(running.url, auth=("agent", "s3cret"))
        client.image("backends/private", "v1", backend_image(SampleBackend("p", version="private")))
        yield running, client
        client.close()


async def test_a_registry_that_requires_credentials_the_node_lacks_is_rejected(
    node: NodeClient, auth_registry: tuple[RunningRegistry, Pusher], tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "auth"))
    ref = f"{auth_registry[0].host}/backends/private:v1"

    error = await _install_ref(node, "cpu-private", ref)

    assert error.startswith(
        _rejected(ref, "manifest v1: authentication required (HTTP 401) and no credentials for ")
    )
    assert classify_node_error(error) == INSTALL_REJECTED


async def test_credentials_from_docker_config_json_open_a_basic_auth_registry(
    node: NodeClient, auth_registry: tuple[RunningRegistry, Pusher], tmp_path: Path, monkeypatch
) -> None:
    host = auth_registry[0].host
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "config.json").write_text(
        json.dumps({"auths": {host: {"username": "agent", "password": "s3cret"}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "auth"))
    node.gallery.add({"name": "cpu-private", "uri": f"{host}/backends/private:v1"})

    reply = await node.install("cpu-private")

    assert reply.success, reply.error
    assert node.installed_version("cpu-private") == "private"


async def test_wrong_credentials_are_rejected_without_echoing_them(
    node: NodeClient, auth_registry: tuple[RunningRegistry, Pusher], tmp_path: Path, monkeypatch
) -> None:
    host = auth_registry[0].host
    (tmp_path / "auth").mkdir()
    (tmp_path / "auth" / "config.json").write_text(
        json.dumps({"auths": {host: {"username": "agent", "password": "wrong-pass"}}})
    )
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "auth"))
    ref = f"{host}/backends/private:v1"

    error = await _install_ref(node, "cpu-private", ref)

    assert error == _rejected(ref, "manifest v1: authentication failed (HTTP 401 unauthorized)")
    assert "wrong-pass" not in error


async def test_an_unreachable_registry_is_a_transient_failure_naming_the_image(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    ref = f"127.0.0.1:{free_port()}/backends/echo:v1"

    error = await _install_ref(node, "cpu-unreachable", ref)

    assert error.startswith(
        f'{GALLERY}failed to download backend "{ref}": failed to pull OCI image "{ref}": '
        "manifest v1: ConnectError"
    )
    assert classify_node_error(error) == INSTALL_FAILED
    await _still_serves(node, registry, pusher)
