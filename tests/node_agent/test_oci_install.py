"""Installing image backends from a real registry: gallery entries, metas, requests, progress."""

from __future__ import annotations

import asyncio
import platform
import re
import tarfile
from dataclasses import replace
from pathlib import Path

from durable_installs.devstack.registry import (
    Blob,
    Image,
    Pusher,
    backend_image,
    file_member,
    tar_layer,
    write_layout,
)
from durable_installs.devstack.sample_backend import SampleBackend
from durable_installs.node_agent import backend_rpc
from durable_installs.node_agent.oci.manifest import host_platform
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import BackendInstallRequest
from durable_installs.servers import RunningRegistry
from tests.node_agent.agent_process import agent_command, running_agent
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import NodeClient, eventually
from tests.registry import RegistryFront, pusher, registry

__all__ = ["pusher", "registry"]


def _push(pusher: Pusher, registry: RunningRegistry, repo: str, spec: SampleBackend) -> str:
    pusher.image(repo, spec.version, backend_image(spec))
    return f"{registry.host}/{repo}:{spec.version}"


async def test_a_gallery_entry_pointing_at_an_image_installs_and_serves(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    image = backend_image(SampleBackend("cpu-echo", version="1.0.0"))
    digest = pusher.image("backends/echo", "v1", image)
    ref = f"{registry.host}/backends/echo:v1"
    node.gallery.add({"name": "cpu-echo", "uri": ref, "version": "1.0.0"})

    reply = await node.install("cpu-echo", model_id="m")

    assert reply.success, reply.error
    assert await backend_rpc.health(reply.address)
    assert node.installed_version("cpu-echo") == "1.0.0"
    [row] = (await node.listing()).backends or []
    assert (row.name, row.uri, row.digest) == ("cpu-echo", ref, digest)
    assert not list((node.backends_dir / ".downloads").glob("oci-*"))


async def test_a_released_tag_that_is_missing_falls_back_to_the_development_build(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    """LocalAI's order: ``uri``, mirrors, then ``latest-`` → ``master-`` (and ``-development``)."""
    digest = pusher.image(
        "backends/fallback-master", "master-cpu-echo", backend_image(SampleBackend("cpu-echo"))
    )
    released = f"{registry.host}/backends/fallback-master:latest-cpu-echo"
    node.gallery.add({"name": "cpu-echo", "uri": released})

    reply = await node.install("cpu-echo", model_id="m")

    assert reply.success, reply.error
    [row] = (await node.listing()).backends or []
    assert (row.uri, row.digest) == (
        f"{registry.host}/backends/fallback-master:master-cpu-echo",
        digest,
    )


async def test_the_development_suffix_is_the_last_fallback(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    pusher.image(
        "backends/fallback-dev",
        "master-cpu-echo-development",
        backend_image(SampleBackend("cpu-echo")),
    )
    node.gallery.add(
        {"name": "cpu-echo", "uri": f"{registry.host}/backends/fallback-dev:latest-cpu-echo"}
    )

    reply = await node.install("cpu-echo", model_id="m")

    assert reply.success, reply.error
    [row] = (await node.listing()).backends or []
    assert row.uri.endswith(":master-cpu-echo-development")


async def test_progress_names_each_layer_and_counts_over_the_whole_image(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    spec = SampleBackend("cpu-big", version="2.0.0", padding_bytes=3 * 1024 * 1024)
    ref = _push(pusher, registry, "backends/big", spec)
    node.gallery.add({"name": "cpu-big", "uri": ref})

    reply = await node.install("cpu-big", op_id="op-oci-progress")

    assert reply.success, reply.error
    events = node.events["op-oci-progress"]
    layered = [
        e for e in events if re.fullmatch(rf"Downloading [12]/2 {re.escape(ref)}", e.file_name)
    ]
    assert layered, [e.file_name for e in events]  # debounced: at least the last layer shows
    assert all(e.total == layered[-1].total for e in layered)
    assert layered[-1].total.endswith("MiB")  # the whole image, not only the small second layer
    assert any(e.file_name == f"Extracting {ref}" and e.percentage == 100.0 for e in events)


async def test_the_index_entry_of_this_nodes_platform_is_installed(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    here = host_platform()
    other = "arm64" if here.architecture != "arm64" else "amd64"
    pusher.multi_platform(
        "backends/multi",
        "v1",
        [
            (
                backend_image(SampleBackend("x", version="other-arch"), architecture=other),
                {"os": "linux", "architecture": other},
            ),
            (
                backend_image(SampleBackend("x", version="this-arch")),
                {"os": "linux", "architecture": here.architecture},
            ),
        ],
    )
    node.gallery.add({"name": "cpu-multi", "uri": f"{registry.host}/backends/multi:v1"})

    reply = await node.install("cpu-multi")

    assert reply.success, reply.error
    assert node.installed_version("cpu-multi") == "this-arch"


async def test_an_image_pinned_by_digest_installs_that_manifest(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    digest = pusher.image("backends/pinned", "v1", backend_image(SampleBackend("p", version="1")))
    pusher.image("backends/pinned", "v1", backend_image(SampleBackend("p", version="2")))
    node.gallery.add({"name": "cpu-pinned", "uri": f"{registry.host}/backends/pinned@{digest}"})

    reply = await node.install("cpu-pinned")

    assert reply.success, reply.error
    assert node.installed_version("cpu-pinned") == "1"


async def test_a_meta_backend_resolves_through_the_nodes_capability(
    start_agent: AgentFactory, registry: RunningRegistry, pusher: Pusher
) -> None:
    node = await start_agent(capability="nvidia")
    gpu = _push(pusher, registry, "backends/gpu", SampleBackend("g", version="gpu"))
    cpu = _push(pusher, registry, "backends/cpu", SampleBackend("c", version="cpu"))
    node.gallery.add({"name": "cuda-echo", "uri": gpu})
    node.gallery.add({"name": "cpu-echo", "uri": cpu})
    node.gallery.add_meta("echo", {"nvidia": "cuda-echo", "default": "cpu-echo"})

    reply = await node.install("echo")

    assert reply.success, reply.error
    assert node.installed_version("cuda-echo") == "gpu"
    rows = {r.name: r for r in (await node.listing()).backends or []}
    assert rows["echo"].is_meta and rows["cuda-echo"].digest.startswith("sha256:")


async def test_a_meta_backend_falls_back_to_default_for_an_unlisted_capability(
    start_agent: AgentFactory, registry: RunningRegistry, pusher: Pusher
) -> None:
    node = await start_agent(capability="intel")
    cpu = _push(pusher, registry, "backends/cpu", SampleBackend("c", version="cpu"))
    node.gallery.add({"name": "cpu-echo", "uri": cpu})
    node.gallery.add_meta("echo", {"nvidia": "cuda-echo", "default": "cpu-echo"})

    reply = await node.install("echo")

    assert reply.success, reply.error
    assert node.installed_version("cpu-echo") == "cpu"


async def test_an_ocifile_layout_in_the_agents_own_gallery_installs(
    node: NodeClient, tmp_path: Path
) -> None:
    """A local OCI layout is trusted only in the agent's own gallery, never from a request."""
    layout = tmp_path / "images" / "local-echo.tar"
    digest = write_layout(layout, backend_image(SampleBackend("l", version="layout")))
    node.gallery.add({"name": "local-echo", "uri": f"ocifile://{layout}"})

    reply = await node.install("local-echo")

    assert reply.success, reply.error
    assert node.installed_version("local-echo") == "layout"
    [row] = (await node.listing()).backends or []
    assert row.digest == digest


async def test_a_requested_image_installs_under_the_requested_name(
    start_agent: AgentFactory, registry: RunningRegistry, pusher: Pusher
) -> None:
    node = await start_agent(allow_request_uris=(f"oci://{registry.host}/backends/",))
    ref = _push(pusher, registry, "backends/ext", SampleBackend("e", version="ext"))

    reply = await node.install("my-echo", uri=f"oci://{ref}", name="my-echo")

    assert reply.success, reply.error
    assert node.installed_version("my-echo") == "ext"


async def test_an_upgrade_pulls_the_new_image_and_records_its_digest(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    ref = _push(pusher, registry, "backends/up", replace(SampleBackend("u"), version="latest"))
    node.gallery.add({"name": "cpu-up", "uri": ref})
    assert (await node.install("cpu-up")).success
    newer = pusher.image("backends/up", "latest", backend_image(SampleBackend("u", version="2")))

    reply = await node.upgrade("cpu-up")

    assert reply.success, reply.error
    assert node.installed_version("cpu-up") == "2"
    [row] = (await node.listing()).backends or []
    assert row.digest == newer


async def test_whiteouts_of_an_upper_layer_remove_lower_files(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    base = backend_image(SampleBackend("w", version="1"))
    junk = tar_layer([file_member("junk/a", b"a"), file_member("old.txt", b"old")])
    cleanup = tar_layer([file_member(".wh.old.txt", b""), file_member("junk/.wh..wh..opq", b"")])
    pusher.image("backends/wh", "v1", Image(layers=[junk, *base.layers, cleanup]))
    node.gallery.add({"name": "cpu-wh", "uri": f"{registry.host}/backends/wh:v1"})

    reply = await node.install("cpu-wh")

    assert reply.success, reply.error
    directory = node.backends_dir / "cpu-wh"
    assert not (directory / "old.txt").exists() and list((directory / "junk").iterdir()) == []


def test_the_host_platform_is_linux_in_oci_terms() -> None:
    assert str(host_platform()).startswith("linux/")
    assert platform.machine()  # sanity: the detection has something to map
    assert tarfile  # keep the import used for readers adding members


async def test_cancel_mid_pull_replies_cancelled_and_leaves_no_blobs_or_staging(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    pusher.image("backends/held", "v1", backend_image(SampleBackend("h", padding_bytes=65536)))
    with RegistryFront(registry.url, "hold") as front:
        node.gallery.add({"name": "cpu-held", "uri": f"{front.host}/backends/held:v1"})
        install = asyncio.create_task(node.install("cpu-held", op_id="op-oci-cancel"))
        await eventually(
            lambda: any(
                e.file_name.startswith("Downloading 1/2") and e.current
                for e in node.events.get("op-oci-cancel", [])
            ),
            "layer download in progress",
        )

        ack = await node.cancel("op-oci-cancel")
        reply = await install

    assert ack == {"op_id": "op-oci-cancel", "cancelled": True}
    assert not reply.success and reply.error.startswith("cancelled")
    assert node.staging_leftovers() == []
    assert not list((node.backends_dir / ".downloads").glob("oci-*"))
    assert not (node.backends_dir / "cpu-held").exists()


async def test_an_agent_killed_mid_pull_resumes_the_blob_after_restart(
    start_agent: AgentFactory,
    nats_url: str,
    nc,
    node_id: str,
    tmp_path: Path,
    gallery,
    port_range: tuple[int, int],
    registry: RunningRegistry,
    pusher: Pusher,
) -> None:
    image = backend_image(SampleBackend("k", version="resumed", padding_bytes=256 * 1024))
    pusher.image("backends/killed", "v1", image)
    with RegistryFront(registry.url, "hold") as front:
        gallery.add({"name": "cpu-killed", "uri": f"{front.host}/backends/killed:v1"})
        client = NodeClient(nc, node_id, None, gallery, tmp_path / "backends")  # type: ignore[arg-type]
        command = agent_command(node_id, client.backends_dir, gallery, nats_url, port_range)
        async with running_agent(command, tmp_path / "agent.log") as agent:
            events = await client.watch("op-oci-kill")
            request = BackendInstallRequest(backend="cpu-killed", op_id="op-oci-kill")
            await nc.publish(subjects.install(node_id), request.to_wire())
            await eventually(
                lambda: any(e.current == "512 B" for e in events), "first 512 bytes on disk"
            )
            await agent.kill()  # SIGKILL, mid-blob

        node = await start_agent()
        front.gate.set()
        reply = await node.install("cpu-killed")

    assert reply.success, reply.error
    assert node.installed_version("cpu-killed") == "resumed"
    assert front.blob_ranges.count("bytes=512-") == 1  # the partial blob was resumed, not refetched


async def test_an_image_with_docker_media_types_installs_too(
    node: NodeClient, registry: RunningRegistry, pusher: Pusher
) -> None:
    oci_image = backend_image(SampleBackend("d", version="docker"))
    layers = [
        Blob("application/vnd.docker.image.rootfs.diff.tar.gzip", layer.data)
        for layer in oci_image.layers
    ]
    config = Blob("application/vnd.docker.container.image.v1+json", oci_image.config.data)
    docker = Image(
        layers=layers,
        config=config,
        media_type="application/vnd.docker.distribution.manifest.v2+json",
    )
    pusher.image("backends/docker", "v1", docker)
    node.gallery.add({"name": "cpu-docker", "uri": f"{registry.host}/backends/docker:v1"})

    reply = await node.install("cpu-docker")

    assert reply.success, reply.error
    assert node.installed_version("cpu-docker") == "docker"
