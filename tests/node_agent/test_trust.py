"""The node agent installs only what it was configured to trust (issue 11).

A request's ``uri`` and ``backend_galleries`` are refused unless an allow-list admits them;
local paths and ``file://`` URLs from a request never are; error replies never carry fetched
content; ``nodes.<node>.stop`` is ignored unless the agent was started to obey it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from durable_installs.contracts.failures import INSTALL_REJECTED, classify_node_error
from durable_installs.devstack.sample_backend import (
    Gallery,
    SampleBackend,
    build_archive,
    write_backend_dir,
)
from durable_installs.node_agent.errors import InstallError
from durable_installs.node_agent.trust import Trust
from durable_installs.protocol import subjects
from durable_installs.protocol.messages import GalleryConfig, encode_galleries
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import ArtifactServer, NodeClient, eventually

GALLERY = "installing backend from gallery: "
SECRET = "TOP-SECRET-c0ffee"


class PageServer:
    """Answers every GET with one fixed status, reason phrase and body (an error page)."""

    def __init__(self, status: int, body: bytes, reason: str = "") -> None:
        self.status, self.body, self.reason = status, body, reason
        self.headers: dict[str, str] = {}
        self.hits = 0
        page = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                page.hits += 1
                self.send_response(page.status, page.reason or None)
                for name, value in page.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(page.body)))
                self.end_headers()
                self.wfile.write(page.body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}{path}"

    def __enter__(self) -> PageServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def secret_page() -> Iterator[PageServer]:
    """An internal page whose second line is a secret and would break a YAML parser."""
    body = f"<html>\n<p>{SECRET}: key: value</p>\n</html>\n".encode()
    with PageServer(200, body) as server:
        yield server


def _published_backend(server: ArtifactServer, archives: Path, name: str) -> tuple[str, str]:
    built = build_archive(archives / f"{name}.tar.gz", SampleBackend(name))
    return server.publish(f"/{name}.tar.gz", built.path), built.sha256


def _web_gallery(server: ArtifactServer, archives: Path, name: str = "web") -> str:
    url, sha256 = _published_backend(server, archives, "web-echo")
    index = Gallery(path=archives / f"{name}-index.json", name=name)
    index.add({"name": "web-echo", "uri": url, "sha256": sha256})
    return server.publish(f"/galleries/{name}/index.json", index.path)


# --- request uri ---------------------------------------------------------------------------


async def test_a_request_uri_is_refused_by_default_and_nothing_is_fetched(
    node: NodeClient, artifact_server: ArtifactServer, archives: Path
) -> None:
    url, _ = _published_backend(artifact_server, archives, "evil")

    reply = await node.install("x", uri=url, name="x")

    assert reply.error == (
        f"{GALLERY}request uri is not allowed on this node: {url} "
        f"(start the agent with --allow-request-uri {artifact_server.url('/')} to allow)"
    )
    assert classify_node_error(reply.error) == INSTALL_REJECTED
    assert artifact_server.requests == []
    assert not (node.backends_dir / "x").exists()


async def test_a_request_uri_under_an_allowed_prefix_installs(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    node = await start_agent(allow_request_uris=(artifact_server.url("/"),))
    url, _ = _published_backend(artifact_server, archives, "cpu-ext")

    reply = await node.install("cpu-ext", uri=url, name="cpu-ext")

    assert reply.success, reply.error


async def test_a_request_uri_outside_the_allowed_path_is_refused(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    node = await start_agent(allow_request_uris=(artifact_server.url("/trusted"),))
    url, _ = _published_backend(artifact_server, archives, "trusted-evil")

    reply = await node.install("x", uri=url, name="x")

    assert reply.error.startswith(f"{GALLERY}request uri is not allowed on this node: {url} ")
    assert artifact_server.requests == []


async def test_a_request_uri_is_not_followed_to_a_redirect_outside_the_allow_list(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    elsewhere, _ = _published_backend(artifact_server, archives, "elsewhere")
    with PageServer(302, b"") as trusted:
        trusted.headers = {"Location": elsewhere}
        node = await start_agent(allow_request_uris=(trusted.url("/"),))

        reply = await node.install("x", uri=trusted.url("/x.tar.gz"), name="x")

    assert reply.error.startswith(
        f"{GALLERY}request uri redirected to a location not allowed on this node: {elsewhere} "
    )
    assert classify_node_error(reply.error) == INSTALL_REJECTED
    assert artifact_server.requests == []
    assert not (node.backends_dir / "x").exists()


@pytest.mark.parametrize("form", ["file-url", "path", "directory", "ocifile"])
async def test_local_paths_and_file_urls_from_a_request_are_never_installed(
    start_agent: AgentFactory, archives: Path, tmp_path: Path, form: str
) -> None:
    node = await start_agent(allow_request_uris=("http://127.0.0.1/",))
    built = build_archive(archives / "local.tar.gz", SampleBackend("local"))
    directory = write_backend_dir(tmp_path / "local-dir", SampleBackend("local"))
    uri = {
        "file-url": built.uri,
        "path": str(built.path),
        "directory": str(directory),
        "ocifile": f"ocifile://{built.path}",
    }[form]

    reply = await node.install("local", uri=uri, name="local")

    assert reply.error.startswith(f"{GALLERY}request uri is not allowed on this node: {uri} ")
    assert "never allowed" in reply.error
    assert classify_node_error(reply.error) == INSTALL_REJECTED
    assert not (node.backends_dir / "local").exists()


async def test_a_request_uri_is_refused_on_upgrade_too(
    node: NodeClient, artifact_server: ArtifactServer, archives: Path
) -> None:
    url, _ = _published_backend(artifact_server, archives, "evil")

    reply = await node.upgrade("x", uri=url, name="x")

    assert reply.error.startswith("upgrading backend from gallery: request uri is not allowed")
    assert artifact_server.requests == []


# --- request galleries -----------------------------------------------------------------------


async def test_request_galleries_are_refused_by_default_and_nothing_is_fetched(
    node: NodeClient, artifact_server: ArtifactServer, archives: Path
) -> None:
    index_url = _web_gallery(artifact_server, archives)
    galleries = encode_galleries([GalleryConfig(name="web", url=index_url)])
    artifact_server.requests.clear()

    reply = await node.install("web-echo", backend_galleries=galleries)

    assert reply.error == (
        f"{GALLERY}request galleries are not allowed on this node: {index_url} "
        f"(start the agent with --allow-request-galleries {artifact_server.url('/galleries/web/')}"
        " to allow)"
    )
    assert classify_node_error(reply.error) == INSTALL_REJECTED
    assert artifact_server.requests == []


async def test_request_galleries_under_an_allowed_prefix_are_used(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    node = await start_agent(allow_request_galleries=(artifact_server.url("/galleries"),))
    index_url = _web_gallery(artifact_server, archives)
    galleries = encode_galleries([GalleryConfig(name="web", url=index_url)])

    reply = await node.install("web@web-echo", backend_galleries=galleries)

    assert reply.success, reply.error


async def test_every_mirror_of_a_request_gallery_must_be_allowed(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    node = await start_agent(allow_request_galleries=(artifact_server.url("/galleries/"),))
    index_url = _web_gallery(artifact_server, archives)
    mirror = "http://127.0.0.1:1/internal/index.yaml"
    galleries = encode_galleries([GalleryConfig(name="web", url=index_url, mirrors=[mirror])])

    reply = await node.install("web-echo", backend_galleries=galleries)

    assert reply.error.startswith(f"{GALLERY}request galleries are not allowed on this node: ")
    assert mirror in reply.error


async def test_a_request_gallery_equal_to_the_agents_own_is_admitted(
    node: NodeClient, archives: Path
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    galleries = encode_galleries([node.gallery.config])

    reply = await node.install("cpu-echo", backend_galleries=galleries)

    assert reply.success, reply.error


async def test_a_file_gallery_from_a_request_is_never_read_whatever_the_allow_list(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    node = await start_agent(allow_request_galleries=("http://127.0.0.1/",))
    secret = tmp_path / "secret.yaml"
    secret.write_text(f"password: {SECRET}\n  bad: [indent\n")
    galleries = encode_galleries([GalleryConfig(name="s", url=secret.as_uri())])

    reply = await node.install("anything", backend_galleries=galleries)

    assert reply.error.startswith(f"{GALLERY}request galleries are not allowed on this node: ")
    assert "never allowed" in reply.error and SECRET not in reply.error


async def test_a_request_gallery_whose_index_names_a_local_file_is_refused(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    node = await start_agent(allow_request_galleries=(artifact_server.url("/"),))
    built = build_archive(archives / "local.tar.gz", SampleBackend("cpu-local"))
    index = Gallery(path=archives / "local-index.json", name="web")
    index.add({"name": "cpu-local", "uri": built.uri, "sha256": built.sha256})
    index_url = artifact_server.publish("/local-index.json", index.path)
    galleries = encode_galleries([GalleryConfig(name="web", url=index_url)])

    reply = await node.install("cpu-local", backend_galleries=galleries)

    assert reply.error.startswith(f"{GALLERY}gallery {index_url} names a local artifact source")
    assert not (node.backends_dir / "cpu-local").exists()


# --- error replies never echo fetched content ------------------------------------------------


async def test_an_index_that_is_not_yaml_is_reported_by_line_never_by_content(
    start_agent: AgentFactory, secret_page: PageServer
) -> None:
    node = await start_agent(allow_request_galleries=(secret_page.url("/"),))
    index_url = secret_page.url("/internal/status.html")
    galleries = encode_galleries([GalleryConfig(name="i", url=index_url)])

    reply = await node.install("anything", backend_galleries=galleries)

    assert secret_page.hits == 1
    assert reply.error == f"{GALLERY}gallery {index_url} is not valid YAML at line 2"
    assert SECRET not in reply.error


async def test_an_own_gallery_file_that_is_not_yaml_is_reported_by_line_only(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    index = tmp_path / "broken.yaml"
    index.write_text(f"- name: a\n- {SECRET}: x: y\n")
    node = await start_agent(galleries=(GalleryConfig(name="b", url=index.as_uri()),))

    reply = await node.install("a")

    assert reply.error == f"{GALLERY}gallery {index.as_uri()} is not valid YAML at line 2"


async def test_an_index_entry_with_a_wrong_type_is_reported_without_its_value(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    index = tmp_path / "typed.yaml"
    index.write_text(f"- name: a\n  mirrors: {{{SECRET}: 1}}\n")
    node = await start_agent(galleries=(GalleryConfig(name="b", url=index.as_uri()),))

    reply = await node.install("a")

    assert reply.error.startswith(f"{GALLERY}gallery {index.as_uri()}: entry 0: mirrors ")
    assert SECRET not in reply.error


@pytest.mark.parametrize("status", [404, 500])
async def test_an_http_error_page_is_reported_by_its_status_alone(
    start_agent: AgentFactory, status: int
) -> None:
    body = f"<html><p>{SECRET}</p></html>".encode()
    with PageServer(status, body, reason=f"Oops {SECRET}") as server:
        node = await start_agent(allow_request_galleries=(server.url("/"),))
        index_url = server.url("/index.yaml")
        galleries = encode_galleries([GalleryConfig(name="i", url=index_url)])

        reply = await node.install("anything", backend_galleries=galleries)

    assert reply.error == f"{GALLERY}gallery {index_url}: HTTP {status}"


@pytest.mark.parametrize("status", [200, 403])
async def test_a_download_that_is_not_an_archive_never_echoes_the_page(
    start_agent: AgentFactory, status: int
) -> None:
    body = f"<html>\n<p>{SECRET}</p>\n</html>\n".encode()
    with PageServer(status, body, reason=f"Denied {SECRET}") as server:
        node = await start_agent(allow_request_uris=(server.url("/"),))

        reply = await node.install("x", uri=server.url("/x.tar.gz"), name="x")

    assert not reply.success and reply.error.startswith(GALLERY)
    assert SECRET not in reply.error


# --- nodes.<node>.stop -----------------------------------------------------------------------


async def test_node_stop_is_logged_and_ignored_by_default(
    node: NodeClient, archives: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    assert (await node.install("cpu-echo", model_id="m1")).success

    await node.nc.publish(subjects.node_stop(node.node_id), b"null")
    await eventually(lambda: "ignoring nodes." in caplog.text, "stop logged")

    assert await node.running_keys() == ["m1#0"]
    assert (await node.install("cpu-echo", model_id="m2")).success


async def test_node_stop_shuts_the_agent_down_when_allowed(
    start_agent: AgentFactory, archives: Path
) -> None:
    node = await start_agent(allow_remote_stop=True)
    node.gallery.add_backend(SampleBackend("cpu-echo"), archives)
    assert (await node.install("cpu-echo", model_id="m1")).success

    await node.nc.publish(subjects.node_stop(node.node_id), b"null")
    await node.agent.wait_stopped()

    assert node.agent.service.supervisor.all() == []


# --- strict decoding ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"backend":"x","force":"yes"}', "force"),
        (b'{"backend":"x","force":1}', "force"),
        (b'{"backend":"x","replica_index":"1"}', "replica_index"),
        (b'{"backend":"x","replica_index":true}', "replica_index"),
        (b'{"backend":"x","replica_index":1.5}', "replica_index"),
    ],
)
async def test_strings_and_numbers_are_not_coerced_where_go_would_reject_them(
    node: NodeClient, body: bytes, field: str
) -> None:
    reply = await node.raw(subjects.install(node.node_id), body)

    assert reply["success"] is False
    assert reply["error"].startswith(f"invalid request: {field}: ")


# --- prefix matching ------------------------------------------------------------------------


def _trust(**prefixes: tuple[str, ...]) -> Trust:
    return Trust.build((), prefixes.get("galleries", ()), prefixes.get("uris", ()))


@pytest.mark.parametrize(
    ("prefix", "candidate"),
    [
        ("https://good.example", "https://good.example/index.yaml"),
        ("https://good.example", "https://GOOD.example:443/x/index.yaml"),
        ("https://good.example/galleries", "https://good.example/galleries/index.yaml"),
        ("https://good.example/galleries/", "https://good.example/galleries/a/b.yaml?sig=1"),
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/index.yaml"),
    ],
)
def test_a_url_under_an_allowed_prefix_is_admitted(prefix: str, candidate: str) -> None:
    _trust(uris=(prefix,)).check_uri(candidate)


@pytest.mark.parametrize(
    ("prefix", "candidate"),
    [
        ("https://good.example", "https://good.example.evil.com/index.yaml"),
        ("https://good.example", "https://good.example@evil.com/index.yaml"),
        ("https://good.example", "https://evil.com@good.example/index.yaml"),
        ("https://good.example", "https://good.example:8443/index.yaml"),
        ("https://good.example", "http://good.example/index.yaml"),
        ("https://good.example/galleries", "https://good.example/galleries-evil/index.yaml"),
        ("https://good.example/galleries", "https://good.example/galleries/../admin/x"),
        ("https://good.example/galleries", "https://good.example/galleries/%2e%2e/admin/x"),
        ("https://good.example/galleries", "https://good.example/galleries\\..\\admin"),
        ("https://good.example/galleries", "https://good.example/other/galleries/x"),
        ("https://good.example", "https://good.example/ x"),
        ("https://good.example", "ftp://good.example/x"),
    ],
)
def test_look_alike_hosts_paths_and_userinfo_are_not_admitted(prefix: str, candidate: str) -> None:
    with pytest.raises(InstallError, match="request uri is not allowed on this node"):
        _trust(uris=(prefix,)).check_uri(candidate)


@pytest.mark.parametrize(
    ("prefix", "candidate", "admitted"),
    [
        ("quay.io/go-skynet/", "quay.io/go-skynet/local-ai-backends:latest-cpu", True),
        (
            "quay.io/go-skynet/local-ai-backends",
            "oci://quay.io/go-skynet/local-ai-backends:x",
            True,
        ),
        (
            "quay.io/go-skynet/local-ai-backends",
            "quay.io/go-skynet/local-ai-backends-evil:x",
            False,
        ),
        ("quay.io/go-skynet/", "quay.io.evil.com/go-skynet/x:latest", False),
        ("docker.io/localai/", "localai/localai-backends:latest-cpu", True),
    ],
)
def test_oci_references_match_on_registry_and_repository(
    prefix: str, candidate: str, admitted: bool
) -> None:
    trust = _trust(uris=(prefix,))
    if admitted:
        trust.check_uri(candidate)
    else:
        with pytest.raises(InstallError):
            trust.check_uri(candidate)


@pytest.mark.parametrize(
    ("flag", "entry"),
    [
        ("uris", "file:///srv/"),
        ("uris", "/srv/backends"),
        ("galleries", "file:///srv/index.yaml"),
        ("galleries", "https://user@good.example/"),
        ("galleries", "https://good.example/?x=1"),
        ("galleries", "quay.io/go-skynet/"),
    ],
)
def test_allow_list_entries_that_cannot_be_matched_safely_are_refused_at_start(
    flag: str, entry: str
) -> None:
    with pytest.raises(ValueError, match="--allow-request-"):
        _trust(**{flag: (entry,)})


# --- bounded index reads ----------------------------------------------------------------------


async def test_an_index_larger_than_the_limit_is_refused_without_reading_it_all(
    start_agent: AgentFactory, artifact_server: ArtifactServer, archives: Path
) -> None:
    index = archives / "big.yaml"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text("- name: a\n" + "# padding\n" * 2000)
    index_url = artifact_server.publish("/big.yaml", index)
    node = await start_agent(
        galleries=(GalleryConfig(name="big", url=index_url),), max_index_bytes=1024
    )

    reply = await node.install("a")

    assert reply.error == f"{GALLERY}gallery {index_url} is larger than the limit of 1.0 KiB"


async def test_an_index_redirecting_to_another_scheme_is_not_followed(
    start_agent: AgentFactory, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text(f"- name: {SECRET}\n")

    with PageServer(302, b"") as server:
        server.headers = {"Location": secret.as_uri()}
        node = await start_agent(galleries=(GalleryConfig(name="r", url=server.url("/i.yaml")),))

        reply = await node.install(SECRET)

    assert reply.error == f"{GALLERY}gallery {server.url('/i.yaml')}: HTTP 302"
