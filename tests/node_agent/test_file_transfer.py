"""The node agent's file-transfer HTTP API (LocalAI's ``/v1/files/<key>``), over real sockets.

Every test starts a real agent in-process with the server on an ephemeral loopback port and
talks to it with httpx, or with a raw socket where httpx would tidy the request up (``..`` in a
path) or where the test must cut a connection half-way through a body.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from durable_installs.node_agent.files import PARTIAL_DIR, FilesConfig, FilesStartupError
from tests.node_agent.conftest import AgentFactory
from tests.node_agent.helpers import NodeClient, eventually

TOKEN = "files-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 1) -> bytes:
    return bytes((i * 131 + seed) % 251 for i in range(size))


@dataclass
class FileNode:
    """An agent serving files, its directories and an httpx client for it."""

    node: NodeClient
    client: httpx.AsyncClient
    host: str
    port: int

    @property
    def root(self) -> Path:
        return self.node.backends_dir.parent

    @property
    def models(self) -> Path:
        return self.root / "models"

    def url(self, key: str) -> str:
        return f"http://{self.host}:{self.port}/v1/files/{key}"

    async def put(
        self,
        key: str,
        body: bytes,
        digest: str | None,
        content_range: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = dict(AUTH)
        if digest is not None:
            sent["X-Content-SHA256"] = digest
        if content_range is not None:
            sent["Content-Range"] = content_range
        sent |= headers or {}
        return await self.client.put(self.url(key), content=body, headers=sent)

    async def head(self, key: str) -> httpx.Response:
        return await self.client.head(self.url(key), headers=AUTH)

    async def raw(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        """Send bytes as they are; the status, headers and body of the answer."""
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(data)
            await writer.drain()
            return await read_response(reader, head=data.startswith(b"HEAD "))
        finally:
            writer.close()

    def partials(self) -> list[str]:
        found = []
        for root in ("models", "staging", "data"):
            directory = self.root / root / PARTIAL_DIR
            if directory.exists():
                found += [p.name for p in directory.iterdir()]
        return found


async def read_response(
    reader: asyncio.StreamReader, head: bool = False
) -> tuple[int, dict[str, str], bytes]:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if not head and int(headers.get("content-length", "0")):
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    return status, headers, body


def put_head(key: str, length: int, digest: str, content_range: str | None = None) -> bytes:
    lines = [
        f"PUT /v1/files/{key} HTTP/1.1",
        "Host: test",
        f"Authorization: Bearer {TOKEN}",
        f"Content-Length: {length}",
        f"X-Content-SHA256: {digest}",
    ]
    if content_range:
        lines.append(f"Content-Range: {content_range}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


Serve = Callable[..., Awaitable[FileNode]]


@pytest.fixture
async def serve(start_agent: AgentFactory) -> AsyncIterator[Serve]:
    """Start an agent with its file server (FilesConfig overrides as keyword arguments)."""
    clients: list[httpx.AsyncClient] = []

    async def start(**overrides: object) -> FileNode:
        config = FilesConfig(token=TOKEN, address="127.0.0.1:0", **overrides)  # type: ignore[arg-type]
        node = await start_agent(files=config)
        files = node.agent.files
        assert files is not None
        host, port = files.bound
        client = httpx.AsyncClient(timeout=30)
        clients.append(client)
        return FileNode(node, client, host, port)

    yield start
    for client in clients:
        await client.aclose()


@pytest.fixture
async def files(serve: Serve) -> FileNode:
    return await serve()


# --- uploads -------------------------------------------------------------------------------


async def test_a_fresh_upload_lands_in_the_models_directory(files: FileNode) -> None:
    data = payload(300_000)
    reply = await files.put(
        "models/qwen/model.gguf", data, sha(data), content_range=f"bytes 0-{len(data) - 1}/300000"
    )

    assert reply.status_code == 200, reply.text
    target = files.models / "qwen" / "model.gguf"
    assert reply.json() == {"local_path": str(target)}
    assert target.read_bytes() == data
    assert files.partials() == []

    head = await files.head("models/qwen/model.gguf")
    assert head.status_code == 200
    assert head.headers["X-File-Size"] == str(len(data))
    assert head.headers["X-Content-SHA256"] == sha(data)
    assert head.headers["X-Local-Path"] == str(target)
    assert head.headers["Accept-Ranges"] == "bytes"
    assert "X-Target-SHA256" not in head.headers


async def test_a_put_without_content_range_is_a_whole_file(files: FileNode) -> None:
    data = payload(5000)
    reply = await files.put("models/a.bin", data, sha(data))

    assert reply.status_code == 200, reply.text
    assert (files.models / "a.bin").read_bytes() == data


async def test_an_empty_file_can_be_staged(files: FileNode) -> None:
    reply = await files.put("models/empty.txt", b"", sha(b""))

    assert reply.status_code == 200, reply.text
    assert (files.models / "empty.txt").read_bytes() == b""


async def test_keys_route_to_models_data_and_staging_as_localai_does(files: FileNode) -> None:
    for key, where in [
        ("models/m.bin", files.root / "models" / "m.bin"),
        ("data/out.bin", files.root / "data" / "out.bin"),
        ("ephemeral/x/req-1/in.wav", files.root / "staging" / "ephemeral/x/req-1/in.wav"),
    ]:
        reply = await files.put(key, b"abc", sha(b"abc"))
        assert reply.status_code == 200, (key, reply.text)
        assert reply.json()["local_path"] == str(where)
        assert where.read_bytes() == b"abc"


async def test_a_second_upload_replaces_the_file_only_once_verified(files: FileNode) -> None:
    first, second = payload(1000, 1), payload(1200, 2)
    assert (await files.put("models/m.bin", first, sha(first))).status_code == 200
    bad = await files.put("models/m.bin", second, sha(first))
    assert bad.status_code == 400
    assert (files.models / "m.bin").read_bytes() == first

    good = await files.put("models/m.bin", second, sha(second))
    assert good.status_code == 200
    assert (files.models / "m.bin").read_bytes() == second
    assert (await files.head("models/m.bin")).headers["X-Content-SHA256"] == sha(second)


async def test_a_download_returns_the_committed_file(files: FileNode) -> None:
    data = payload(70_000)
    await files.put("data/result.bin", data, sha(data))

    reply = await files.client.get(files.url("data/result.bin"), headers=AUTH)
    assert reply.status_code == 200
    assert reply.content == data
    missing = await files.client.get(files.url("data/nothing.bin"), headers=AUTH)
    assert missing.status_code == 404


# --- resume --------------------------------------------------------------------------------


async def _cut_after(
    files: FileNode, key: str, data: bytes, sent: int, reset: bool = False
) -> None:
    """Start a whole-file PUT, send ``sent`` bytes of the body, then drop the connection
    (closed, or reset: then the kernel may discard bytes the server had not read yet)."""
    _, writer = await asyncio.open_connection(files.host, files.port)
    writer.write(put_head(key, len(data), sha(data), f"bytes 0-{len(data) - 1}/{len(data)}"))
    writer.write(data[:sent])
    await writer.drain()
    if reset:
        writer.transport.abort()
    else:
        writer.close()


async def _partial_size(files: FileNode, key: str) -> int | None:
    head = await files.head(key)
    if head.status_code != 200 or "X-Target-SHA256" not in head.headers:
        return None
    return int(head.headers["X-File-Size"])


async def _settled_partial(files: FileNode, key: str, at_least: int = 0) -> int:
    """The committed size of ``key``'s partial once the server has seen the cut."""
    sizes: list[int | None] = []
    for _ in range(400):
        sizes.append(await _partial_size(files, key))
        last = sizes[-1]
        steady = len(sizes) >= 3 and last == sizes[-2] == sizes[-3]
        if last is not None and last >= at_least and steady:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"the partial never settled: {sizes[-5:]}")


async def test_an_upload_cut_half_way_resumes_from_the_committed_size(files: FileNode) -> None:
    data = payload(400_000)
    key = "models/big/model.gguf"
    await _cut_after(files, key, data, 150_000)

    assert await _settled_partial(files, key, at_least=150_000) == 150_000

    head = await files.head(key)
    assert head.headers["X-Target-SHA256"] == sha(data)
    assert "X-Content-SHA256" not in head.headers
    assert head.headers["X-Local-Path"] == str(files.models / "big" / "model.gguf")
    assert not (files.models / "big" / "model.gguf").exists(), "nothing in place before commit"

    rest = await files.put(key, data[150_000:], sha(data), f"bytes 150000-399999/{len(data)}")
    assert rest.status_code == 200, rest.text
    assert (files.models / "big" / "model.gguf").read_bytes() == data
    assert files.partials() == []


async def resume(files: FileNode, key: str, data: bytes) -> httpx.Response:
    """What a client does after losing a connection: HEAD, PUT the rest from the committed
    size; on 409 (the old request still holds the key) wait and retry; on 416 ask again."""
    for _ in range(100):
        committed = await _partial_size(files, key) or 0
        reply = await files.put(
            key, data[committed:], sha(data), f"bytes {committed}-{len(data) - 1}/{len(data)}"
        )
        if reply.status_code not in (409, 416):
            return reply
        await asyncio.sleep(0.1)
    raise AssertionError("the upload never resumed")


async def test_a_reset_connection_resumes_from_what_head_reports(files: FileNode) -> None:
    data = payload(300_000)
    key = "models/reset.bin"
    await _cut_after(files, key, data, 200_000, reset=True)

    reply = await resume(files, key, data)
    assert reply.status_code == 200, reply.text
    assert (files.models / "reset.bin").read_bytes() == data


async def test_a_stalled_upload_is_cut_and_its_bytes_kept(serve: Serve) -> None:
    files = await serve(idle_timeout=0.5)
    data = payload(50_000)
    reader, writer = await asyncio.open_connection(files.host, files.port)
    writer.write(put_head("models/slow.bin", len(data), sha(data)))
    writer.write(data[:20_000])
    await writer.drain()

    closed = await asyncio.wait_for(reader.read(), 10)  # the server gives up on us
    writer.close()
    assert closed == b"" or closed.startswith(b"HTTP/1.1 408")
    assert await _partial_size(files, "models/slow.bin") == 20_000


async def test_a_range_that_does_not_start_at_the_committed_size_is_416(
    files: FileNode,
) -> None:
    data = payload(10_000)
    first = await files.put("models/m.bin", data[:4000], sha(data), "bytes 0-3999/10000")
    assert first.status_code == 308
    assert first.headers["Range"] == "bytes=0-3999"
    assert first.headers["X-File-Size"] == "4000"

    for start in (3000, 5000, 0):  # 0 with the same hash: resume, do not restart
        wrong = await files.put(
            "models/m.bin", data[start:], sha(data), f"bytes {start}-9999/10000"
        )
        assert wrong.status_code == 416, start
        assert wrong.headers["X-File-Size"] == "4000"
        assert wrong.headers["Content-Range"] == "bytes */10000"

    rest = await files.put("models/m.bin", data[4000:], sha(data), "bytes 4000-9999/10000")
    assert rest.status_code == 200
    assert (files.models / "m.bin").read_bytes() == data


async def test_a_resume_without_a_partial_is_416_at_zero(files: FileNode) -> None:
    data = payload(1000)
    reply = await files.put("models/m.bin", data[500:], sha(data), "bytes 500-999/1000")

    assert reply.status_code == 416
    assert reply.headers["X-File-Size"] == "0"


async def test_a_start_at_zero_with_another_hash_restarts_the_upload(files: FileNode) -> None:
    old, new = payload(8000, 1), payload(8000, 2)
    await files.put("models/m.bin", old[:3000], sha(old), "bytes 0-2999/8000")

    reply = await files.put("models/m.bin", new, sha(new), "bytes 0-7999/8000")
    assert reply.status_code == 200
    assert (files.models / "m.bin").read_bytes() == new


async def test_a_resume_claiming_another_hash_is_409_and_drops_the_partial(
    files: FileNode,
) -> None:
    data, other = payload(8000, 1), payload(8000, 2)
    await files.put("models/m.bin", data[:3000], sha(data), "bytes 0-2999/8000")

    reply = await files.put("models/m.bin", other[3000:], sha(other), "bytes 3000-7999/8000")
    assert reply.status_code == 409
    assert (await files.head("models/m.bin")).status_code == 404
    assert files.partials() == []


# --- integrity -----------------------------------------------------------------------------


async def test_a_hash_mismatch_is_refused_and_nothing_is_in_place(files: FileNode) -> None:
    data = payload(20_000)
    reply = await files.put("models/m.bin", data, sha(b"something else"))

    assert reply.status_code == 400
    assert "sha256 mismatch" in reply.text
    assert data[:16].hex() not in reply.text
    assert not (files.models / "m.bin").exists()
    assert files.partials() == []
    assert (await files.head("models/m.bin")).status_code == 404


async def test_a_mismatch_on_the_last_chunk_of_a_resume_drops_everything(
    files: FileNode,
) -> None:
    data = payload(6000)
    claimed = sha(payload(6000, 9))
    await files.put("models/m.bin", data[:2000], claimed, "bytes 0-1999/6000")
    reply = await files.put("models/m.bin", data[2000:], claimed, "bytes 2000-5999/6000")

    assert reply.status_code == 400
    assert not (files.models / "m.bin").exists() and files.partials() == []


@pytest.mark.parametrize("digest", [None, "", "abc", "g" * 64, sha(b"x") + "0"])
async def test_an_upload_must_name_the_whole_files_sha256(files: FileNode, digest) -> None:
    reply = await files.put("models/m.bin", b"x", digest)

    assert reply.status_code == 400
    assert "X-Content-SHA256" in reply.text
    assert not (files.models / "m.bin").exists()


async def test_a_file_already_in_place_is_reported_with_its_hash(files: FileNode) -> None:
    """A file that got there some other way (copied by hand, a LocalAI worker before us)."""
    files.models.mkdir(parents=True, exist_ok=True)
    data = payload(123_456)
    (files.models / "present.gguf").write_bytes(data)

    head = await files.head("models/present.gguf")
    assert head.status_code == 200
    assert head.headers["X-Content-SHA256"] == sha(data)
    assert head.headers["X-File-Size"] == "123456"
    assert (files.models / "present.gguf.sha256").read_text() == sha(data)

    (files.models / "present.gguf").write_bytes(data[:100])  # changed after the sidecar
    os.utime(files.models / "present.gguf.sha256", (1, 1))
    again = await files.head("models/present.gguf")
    assert again.headers["X-Content-SHA256"] == sha(data[:100])


async def test_head_of_a_directory_or_nothing(files: FileNode) -> None:
    (files.models / "adir").mkdir(parents=True)
    assert (await files.head("models/adir")).status_code == 400
    assert (await files.head("models/none")).status_code == 404


# --- keys and paths ------------------------------------------------------------------------


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(
    "key",
    [
        "models/../escape.bin",
        "models/a/../../escape.bin",
        "models/%2e%2e/escape.bin",
        "..%2fescape.bin",
        "/etc/passwd",
        "%2Fetc%2Fpasswd",
        "models/a%00b",
        "models/a%0ab",
        "models/",
        "models//double",
        "models/./dot",
        "models/a\\b",
        f"models/{PARTIAL_DIR}/x",
        "models/" + "x" * 300,
        "models/" + "/".join(["d"] * 600),
        "models/%ff%fe",
        "",
    ],
)
async def test_a_key_that_leaves_its_directory_is_refused_and_nothing_is_written(
    files: FileNode, tmp_path: Path, key: str
) -> None:
    before = _tree(tmp_path)
    for method in ("PUT", "HEAD", "GET"):
        length = 3 if method == "PUT" else 0
        request = (
            f"{method} /v1/files/{key} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {length}\r\nX-Content-SHA256: {sha(b'abc')}\r\n\r\n"
        ).encode() + (b"abc" if method == "PUT" else b"")
        status, _, body = await files.raw(request)
        assert status == 400, (method, key, status)
        if method != "HEAD":
            assert b"key" in body
    assert _tree(tmp_path) == before


async def test_a_symlink_out_of_the_models_directory_is_refused(
    files: FileNode, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    files.models.mkdir(parents=True, exist_ok=True)
    (files.models / "evil").symlink_to(outside)
    (files.models / "evil-file").symlink_to(outside / "secret")

    for key in ("models/evil/new.bin", "models/evil/secret", "models/evil-file"):
        assert (await files.put(key, b"abc", sha(b"abc"))).status_code == 400, key
        assert (await files.head(key)).status_code == 400, key
        get = await files.client.get(files.url(key), headers=AUTH)
        assert get.status_code == 400 and b"secret" not in get.content
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_bytes() == b"secret"


async def test_a_key_under_a_file_is_refused(files: FileNode) -> None:
    await files.put("models/plain", b"abc", sha(b"abc"))
    reply = await files.put("models/plain/child", b"abc", sha(b"abc"))

    assert reply.status_code == 400
    assert (files.models / "plain").read_bytes() == b"abc"


# --- who may talk to it --------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", f"bearer {TOKEN}", f"Basic {TOKEN}",
     f"Bearer {TOKEN}x", f"Bearer  {TOKEN}"],
)  # fmt: skip
async def test_a_missing_or_wrong_token_is_401(files: FileNode, authorization) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    digest = {"X-Content-SHA256": sha(b"abc")}
    for reply in (
        await files.client.put(files.url("models/m.bin"), content=b"abc", headers=headers | digest),
        await files.client.head(files.url("models/m.bin"), headers=headers),
        await files.client.get(files.url("models/m.bin"), headers=headers),
    ):
        assert reply.status_code == 401
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert not (files.models / "m.bin").exists()


async def test_the_liveness_probe_needs_no_token(files: FileNode) -> None:
    reply = await files.client.get(f"http://{files.host}:{files.port}/healthz")
    assert reply.status_code == 200 and reply.text == "ok"


async def test_other_paths_and_methods(files: FileNode) -> None:
    base = f"http://{files.host}:{files.port}"
    assert (await files.client.get(f"{base}/v1/other", headers=AUTH)).status_code == 404
    post = await files.client.post(files.url("temp"), headers=AUTH)
    assert post.status_code == 405
    assert "HEAD" in post.headers["Allow"]


async def test_without_a_token_nothing_is_served(start_agent: AgentFactory) -> None:
    node = await start_agent(files=FilesConfig(address="127.0.0.1:0"))
    assert node.agent.files is None


async def test_an_agent_whose_file_port_is_taken_refuses_to_start(
    start_agent: AgentFactory,
) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(FilesStartupError, match="cannot listen"):
            await start_agent(
                files=FilesConfig(token=TOKEN, address=f"127.0.0.1:{taken.getsockname()[1]}")
            )
    finally:
        taken.close()


def test_an_address_without_a_token_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durable_installs.node_agent.cli import build_parser, config_from_args

    monkeypatch.delenv("NODE_AGENT_FILES_TOKEN", raising=False)
    args = build_parser().parse_args(
        ["--node-id", "n", "--backends-dir", str(tmp_path), "--files-address", "0.0.0.0:9000"]
    )
    with pytest.raises(ValueError, match="--files-token"):
        config_from_args(args)


def test_the_file_options_come_from_flags_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from durable_installs.node_agent.cli import build_parser, config_from_args

    monkeypatch.setenv("NODE_AGENT_FILES_TOKEN", TOKEN)
    monkeypatch.setenv("NODE_AGENT_MODELS_DIR", str(tmp_path / "m"))
    args = build_parser().parse_args(
        ["--node-id", "n", "--backends-dir", str(tmp_path / "b"), "--max-file-size", "2GiB",
         "--port-range", "41000-41010"]
    )  # fmt: skip
    config = config_from_args(args)

    assert config.files.token == TOKEN
    assert TOKEN not in repr(config)
    assert config.files.models_dir == tmp_path / "m"
    assert config.files.max_file_bytes == 2 * 1024**3
    assert config.files.address == ""
    assert config.files.listen_address("0.0.0.0", (41000, 41010)) == ("0.0.0.0", 40999)


# --- bounds --------------------------------------------------------------------------------


async def test_an_oversize_file_is_refused_before_its_body(serve: Serve) -> None:
    files = await serve(max_file_bytes=1000)
    assert (await files.put("models/m.bin", payload(1001), sha(payload(1001)))).status_code == 413
    reply = await files.put("models/m.bin", b"abc", sha(b"abc"), "bytes 0-2/5000")
    assert reply.status_code == 413
    assert "1000" in reply.text
    assert files.partials() == [] and not (files.models / "m.bin").exists()
    fits = await files.put("models/m.bin", payload(1000), sha(payload(1000)))
    assert fits.status_code == 200


async def test_an_upload_that_would_eat_the_reserve_is_507(serve: Serve) -> None:
    files = await serve(reserve_bytes=2**62)
    reply = await files.put("models/m.bin", b"abc", sha(b"abc"))

    assert reply.status_code == 507
    assert files.partials() == [] and not (files.models / "m.bin").exists()


async def test_a_body_without_content_length_is_411(files: FileNode) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"

    reply = await files.client.put(
        files.url("models/m.bin"),
        content=chunks(),
        headers=AUTH | {"X-Content-SHA256": sha(b"abc")},
    )
    assert reply.status_code == 411


async def test_a_content_length_that_disagrees_with_the_range_is_400(files: FileNode) -> None:
    reply = await files.put("models/m.bin", b"abcd", sha(b"abcdef"), "bytes 0-5/6")
    assert reply.status_code == 400


@pytest.mark.parametrize(
    "content_range",
    ["bytes 5-2/10", "bytes 0-9/5", "bytes=0-3/4", "bytes 0-3", "bytes a-3/4", "bytes -1-3/4",
     "bytes 0-3/*", "bytes 0-99999999999999999999999/1"],
)  # fmt: skip
async def test_a_malformed_content_range_is_400(files: FileNode, content_range: str) -> None:
    reply = await files.put("models/m.bin", b"abcd", sha(b"abcd"), content_range)
    assert reply.status_code == 400
    assert files.partials() == []


async def test_oversized_headers_are_431(files: FileNode) -> None:
    request = (
        f"HEAD /v1/files/models/m.bin HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"X-Padding: {'p' * 70_000}\r\n\r\n"
    ).encode()
    status, _, _ = await files.raw(request)
    assert status == 431


async def test_a_connection_that_sends_no_headers_is_closed(serve: Serve) -> None:
    files = await serve(header_timeout=0.5)
    reader, writer = await asyncio.open_connection(files.host, files.port)
    writer.write(b"HEAD /v1/files/models/m.bin HTTP/1.1\r\n")
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408")


async def test_concurrent_uploads_of_one_key_do_not_mix(files: FileNode) -> None:
    data = payload(100_000)
    reader, writer = await asyncio.open_connection(files.host, files.port)
    writer.write(put_head("models/m.bin", len(data), sha(data)))
    writer.write(data[:10_000])
    await writer.drain()
    await eventually(lambda: bool(files.partials()), "the first upload to begin")

    second = await files.put("models/m.bin", data, sha(data))
    assert second.status_code == 409
    assert "in progress" in second.text
    assert int(second.headers["Retry-After"]) >= 1

    writer.write(data[10_000:])
    await writer.drain()
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 200, body
    assert (files.models / "m.bin").read_bytes() == data


async def test_many_concurrent_uploads_are_bounded(serve: Serve) -> None:
    files = await serve(max_uploads=2)
    data = payload(10_000)
    held = []
    for index in range(2):
        reader, writer = await asyncio.open_connection(files.host, files.port)
        writer.write(put_head(f"models/m{index}.bin", len(data), sha(data)))
        writer.write(data[:100])
        await writer.drain()
        held.append((reader, writer))
    await eventually(lambda: len(files.partials()) == 4, "two uploads to begin")  # data + meta

    third = await files.put("models/m2.bin", data, sha(data))
    assert third.status_code == 503
    assert "Retry-After" in third.headers

    for reader, writer in held:
        writer.write(data[100:])
        await writer.drain()
        assert (await read_response(reader))[0] == 200
        writer.close()
    assert (await files.put("models/m2.bin", data, sha(data))).status_code == 200


async def test_keep_alive_serves_several_requests_on_one_connection(files: FileNode) -> None:
    reader, writer = await asyncio.open_connection(files.host, files.port)
    for index in range(3):
        body = f"file {index}".encode()
        writer.write(put_head(f"models/k{index}.txt", len(body), sha(body)) + body)
        await writer.drain()
        status, _, reply = await read_response(reader)
        assert status == 200 and json.loads(reply)["local_path"].endswith(f"k{index}.txt")
    writer.close()


async def test_stopping_the_agent_stops_the_server_and_keeps_partials(files: FileNode) -> None:
    data = payload(50_000)
    reader, writer = await asyncio.open_connection(files.host, files.port)
    writer.write(put_head("models/m.bin", len(data), sha(data)))
    writer.write(data[:7000])
    await writer.drain()
    await eventually(lambda: bool(files.partials()), "the upload to begin")

    await files.node.agent.stop()
    assert await asyncio.wait_for(reader.read(), 10) is not None
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(files.host, files.port)
    assert len(files.partials()) == 2


async def test_delete_drops_a_partial_upload_and_never_a_committed_file(files: FileNode) -> None:
    """The extension a cancelled staging uses to leave nothing behind."""
    data = payload(4000)
    partial = await files.put("models/p.bin", data[:1000], sha(data), "bytes 0-999/4000")
    assert partial.status_code == 308
    committed = await files.put("models/c.bin", data, sha(data))
    assert committed.status_code == 200

    dropped = await files.client.delete(files.url("models/p.bin"), headers=AUTH)
    kept = await files.client.delete(files.url("models/c.bin"), headers=AUTH)

    assert dropped.status_code == 204
    assert files.partials() == []
    assert kept.status_code == 404
    assert (files.models / "c.bin").read_bytes() == data
    refused = await files.client.delete(files.url("models/c.bin"))
    assert refused.status_code == 401
