"""``LoadModel`` and ``Status`` against real sample backend processes, and the wire encoding.

The client helper lives in ``protocol.backend_grpc`` (activities may import it; they may not
import the node agent). The sample backends decode ``ModelOptions`` by hand, as the helper
encodes it by hand: the round trip through a real process checks both.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from durable_installs.devstack.gallery import SLOW_LOAD_BACKEND
from durable_installs.devstack.sample_backend import SampleBackend, write_backend_dir
from durable_installs.protocol import backend_grpc
from durable_installs.protocol.backend_grpc import (
    MODEL_OPTIONS_FIELDS,
    BackendCallError,
    BackendState,
    LoadResult,
    ModelOptions,
    decode_model_options,
    decode_result,
    encode_model_options,
)
from durable_installs.servers.ports import free_port

TOKEN = "grpc-token-for-tests"


# --- encoding --------------------------------------------------------------------------------


def test_fields_use_backend_protos_numbers() -> None:
    """The numbers LoadModel depends on, as backend/backend.proto declares them."""
    numbers = {name: number for name, (number, _) in MODEL_OPTIONS_FIELDS.items()}
    assert numbers["model"] == 1
    assert numbers["context_size"] == 2
    assert numbers["seed"] == 3
    assert numbers["n_gpu_layers"] == 12
    assert numbers["threads"] == 15
    assert numbers["model_file"] == 21
    assert numbers["mmproj"] == 41
    assert numbers["model_path"] == 59
    assert numbers["options"] == 62
    assert numbers["enable_score"] == 75
    assert len(set(numbers.values())) == len(numbers)
    assert set(MODEL_OPTIONS_FIELDS) == set(ModelOptions.model_fields)


def test_known_bytes() -> None:
    encoded = encode_model_options(
        ModelOptions(model="m.gguf", context_size=512, mmap=True, n_gpu_layers=-1)
    )
    assert encoded == (
        b"\x0a\x06m.gguf"  # 1: string
        + b"\x10\x80\x04"  # 2: 512
        + b"\x38\x01"  # 7: true
        + b"\x60" + b"\xff" * 9 + b"\x01"  # 12: -1 as proto3 int32 (ten bytes)
    )  # fmt: skip
    assert encode_model_options(ModelOptions()) == b""
    floats = encode_model_options(ModelOptions(rope_freq_base=10000.0, lora_scales=[0.5, 1.0]))
    assert floats == b"\x8d\x01" + struct.pack("<f", 10000.0) + b"\xea\x03\x08" + struct.pack(
        "<ff", 0.5, 1.0
    )


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        ModelOptions,
        model=st.text(max_size=40),
        context_size=st.integers(-(2**31), 2**31 - 1),
        n_gpu_layers=st.integers(-(2**31), 2**31 - 1),
        f16_memory=st.booleans(),
        rope_freq_scale=st.floats(width=32, allow_nan=False, allow_infinity=False),
        options=st.lists(st.text(max_size=20), max_size=5),
        lora_scales=st.lists(
            st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=4
        ),
    )
)
def test_encoding_round_trips(options: ModelOptions) -> None:
    assert decode_model_options(encode_model_options(options)) == options


@pytest.mark.parametrize(
    "fields",
    [
        {"model": "x" * 4097},
        {"context_size": 2**31},
        {"threads": -(2**31) - 1},
        {"options": ["o"] * 129},
        {"options": ["o" * 4097]},
        {"rope_freq_base": math.nan},
        {"rope_freq_base": math.inf},
        {"rope_freq_base": 1e39},
        {"engine_args": "{" * (64 * 1024 + 1)},
        {"mmap": "yes"},
        {"context_size": "512"},
    ],
)
def test_options_are_bounded(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        ModelOptions.model_validate(fields)


def test_unknown_fields_are_ignored_so_old_histories_still_decode() -> None:
    assert ModelOptions.model_validate({"model": "a", "gone": 1}) == ModelOptions(model="a")


def test_a_result_message_is_bounded_and_never_carries_control_characters() -> None:
    long = b"\x0a\x90\x4e" + b"A" * 10000 + b"\x10\x01"
    result = decode_result(long)
    assert result.success and len(result.message) <= backend_grpc.MAX_MESSAGE_CHARS
    odd = decode_result(b"\x0a\x06a\x1b[2Jb")
    assert odd == LoadResult(success=False, message="a?[2Jb")


def test_a_truncated_reply_is_an_error_not_a_success() -> None:
    with pytest.raises(ValueError):
        decode_result(b"\x0a\x05ab")


# --- against real backend processes ---------------------------------------------------------

Launch = Callable[..., Awaitable[str]]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """Start a sample backend process (``run.sh --addr``); returns its address once it answers."""
    processes: list[asyncio.subprocess.Process] = []

    async def start(spec: SampleBackend | None = None, token: str = "") -> str:
        spec = spec or SampleBackend("loader")
        directory = write_backend_dir(tmp_path / f"{spec.name}-{len(processes)}", spec)
        address = f"127.0.0.1:{free_port()}"
        env = os.environ | {"LOCALAI_GRPC_AUTH_TOKEN": token}
        processes.append(
            await asyncio.create_subprocess_exec(
                str(directory / "run.sh"), "--addr", address, env=env, cwd=directory
            )
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                await backend_grpc.status(address, token=token, call_timeout=1)
                return address
            except BackendCallError as err:
                if err.code == "UNAUTHENTICATED":
                    return address
                await asyncio.sleep(0.1)
        raise AssertionError("the sample backend did not start")

    yield start
    for process in processes:
        process.terminate()
    for process in processes:
        await asyncio.wait_for(process.wait(), 10)


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(100))
    return path


async def test_load_model_succeeds_with_the_model_file(launch: Launch, model_file: Path) -> None:
    address = await launch()
    assert (await backend_grpc.status(address)).state is BackendState.UNINITIALIZED

    result = await backend_grpc.load_model(
        address,
        ModelOptions(model="tiny.gguf", model_file=str(model_file), context_size=512, threads=2),
        call_timeout=10,
    )

    assert result == LoadResult(success=True, message=result.message)
    assert "tiny.gguf" in result.message and "context 512" in result.message
    assert (await backend_grpc.status(address)).state is BackendState.READY


async def test_the_model_is_found_under_model_path_as_localai_sends_it(
    launch: Launch, model_file: Path
) -> None:
    address = await launch()
    options = ModelOptions(model="tiny.gguf", model_path=str(model_file.parent))
    assert (await backend_grpc.load_model(address, options, call_timeout=10)).success


async def test_a_missing_model_file_is_success_false_with_the_backends_message(
    launch: Launch, tmp_path: Path
) -> None:
    address = await launch()
    missing = tmp_path / "models" / "absent.gguf"

    result = await backend_grpc.load_model(
        address, ModelOptions(model="absent.gguf", model_file=str(missing)), call_timeout=10
    )

    assert not result.success
    assert "absent.gguf" in result.message and "not found" in result.message
    assert (await backend_grpc.status(address)).state is BackendState.ERROR


@pytest.fixture
def unreadable(model_file: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    model_file.chmod(0)
    return model_file


async def test_an_unreadable_model_file_is_success_false(launch: Launch, unreadable: Path) -> None:
    model_file = unreadable
    address = await launch()
    result = await backend_grpc.load_model(
        address, ModelOptions(model_file=str(model_file)), call_timeout=10
    )
    assert not result.success and "not readable" in result.message


async def test_a_directory_is_not_a_model_file(launch: Launch, model_file: Path) -> None:
    address = await launch()
    result = await backend_grpc.load_model(
        address, ModelOptions(model_file=str(model_file.parent)), call_timeout=10
    )
    assert not result.success


async def test_a_slow_load_is_cut_by_the_timeout_and_status_shows_it_busy(
    launch: Launch, model_file: Path
) -> None:
    address = await launch(SampleBackend("slow", load_seconds=3))
    options = ModelOptions(model_file=str(model_file))

    started = time.monotonic()
    with pytest.raises(BackendCallError) as cut:
        await backend_grpc.load_model(address, options, call_timeout=0.5)
    assert cut.value.timed_out and cut.value.code == "DEADLINE_EXCEEDED"
    assert time.monotonic() - started < 2.5

    assert (await backend_grpc.status(address, call_timeout=2)).state is BackendState.BUSY
    result = await backend_grpc.load_model(address, options, call_timeout=10)
    assert result.success
    assert (await backend_grpc.status(address)).state is BackendState.READY


async def test_a_backend_with_a_token_refuses_calls_without_it(
    launch: Launch, model_file: Path
) -> None:
    address = await launch(token=TOKEN)
    options = ModelOptions(model_file=str(model_file))

    with pytest.raises(BackendCallError) as refused:
        await backend_grpc.load_model(address, options, call_timeout=5)
    assert refused.value.code == "UNAUTHENTICATED"
    assert TOKEN not in str(refused.value)
    assert (await backend_grpc.load_model(address, options, TOKEN, call_timeout=5)).success


async def test_nobody_listening_is_unavailable() -> None:
    with pytest.raises(BackendCallError) as failed:
        await backend_grpc.load_model(
            f"127.0.0.1:{free_port()}", ModelOptions(model="m"), call_timeout=3
        )
    assert failed.value.code == "UNAVAILABLE" and failed.value.unavailable
    assert not failed.value.timed_out


async def test_the_node_agents_health_and_free_still_work(launch: Launch) -> None:
    from durable_installs.node_agent import backend_rpc

    address = await launch()
    assert await backend_rpc.health(address)
    assert await backend_rpc.free(address)


def test_the_demo_gallery_has_a_slow_loading_backend() -> None:
    assert SLOW_LOAD_BACKEND.load_seconds >= 10
