"""The byte-counting proxy the load chaos tests measure re-sent bytes with: it must count
request bodies exactly (heads and responses apart), across keep-alive requests and chunk
boundaries, and look down when its upstream is down."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from durable_installs.servers import ByteCounter, free_port
from durable_installs.servers.byte_counter import SeenRequest, _RequestStream


@contextlib.asynccontextmanager
async def echo_length_server() -> AsyncIterator[int]:
    """An HTTP/1.1 server that reads each body and answers its length (keep-alive)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = 0
                for line in head.decode().split("\r\n"):
                    if line.lower().startswith("content-length:"):
                        length = int(line.split(":", 1)[1])
                if length:
                    await reader.readexactly(length)
                body = str(length).encode()
                response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                writer.write(response if head.startswith(b"HEAD ") else response + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()


async def test_put_bodies_are_counted_apart_from_heads_and_responses() -> None:
    async with (
        echo_length_server() as port,
        ByteCounter("127.0.0.1", port) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as client,
    ):
        assert (await client.head("/v1/files/models/a")).status_code == 200
        first = await client.put("/v1/files/models/a", content=b"x" * 1_000_003)
        second = await client.put(
            "/v1/files/models/b",
            content=b"y" * 5000,
            headers={"Content-Range": "bytes 10-5009/6000"},
        )
        await client.get("/v1/files/models/a")

    assert (first.text, second.text) == ("1000003", "5000")
    assert proxy.body_bytes("PUT") == 1_000_003 + 5000
    assert proxy.body_bytes("PUT", "/b") == 5000
    assert [r.method for r in proxy.requests] == ["HEAD", "PUT", "PUT", "GET"]
    assert proxy.requests_of("PUT", "/b")[0].content_range == "bytes 10-5009/6000"
    assert proxy.connections == 1, "keep-alive requests share one connection"
    assert proxy.client_bytes > proxy.body_bytes("PUT"), "heads are counted apart"


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 100])
def test_a_stream_split_anywhere_is_framed_the_same(cut: int) -> None:
    wire = (
        b"PUT /k HTTP/1.1\r\nContent-Length: 10\r\n\r\n0123456789"
        b"HEAD /k HTTP/1.1\r\nHost: x\r\n\r\n"
        b"PUT /j HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc"
    )
    seen: list[SeenRequest] = []
    stream = _RequestStream(seen)
    for start in range(0, len(wire), cut):
        stream.feed(wire[start : start + cut])

    assert [(r.method, r.path, r.body) for r in seen] == [
        ("PUT", "/k", 10),
        ("HEAD", "/k", 0),
        ("PUT", "/j", 3),
    ]


def test_a_body_it_cannot_frame_counts_the_rest_of_the_connection() -> None:
    seen: list[SeenRequest] = []
    stream = _RequestStream(seen)
    stream.feed(b"PUT /k HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")

    assert seen[0].declared is None
    assert seen[0].body == len(b"5\r\nhello\r\n0\r\n\r\n")


async def test_an_upstream_that_is_down_looks_down_through_the_proxy() -> None:
    async with (
        ByteCounter("127.0.0.1", free_port()) as proxy,
        httpx.AsyncClient(base_url=proxy.url) as client,
    ):
        with pytest.raises(httpx.TransportError):
            await client.head("/v1/files/models/a")

    assert proxy.refused >= 1
