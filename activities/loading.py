"""The ``load_model`` activity: ``LoadModel`` on the slot's backend, watched, never sent twice
while the backend may still be loading.

A large checkpoint takes minutes to load, and ``LoadModel`` is one unary gRPC call with no
progress of its own. So the activity bounds the call by a deadline that scales with the
model's size (the workflow computes it), and watches the backend meanwhile with ``Status``,
which a backend answers while it loads: a backend that stops answering for the stall bound
is a stalled load (wedged or gone), whatever the deadline says. ``Status`` is also the load's
probe, as ``backend.install.status`` is the install's: a retried attempt (the worker died
mid-load) asks first, waits for a load still ``busy``, and takes ``ready`` as done, instead of
sending a second ``LoadModel`` to a backend that is already loading the first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from temporalio import activity
from temporalio.exceptions import ApplicationError

from durable_installs.contracts.failures import LOAD_FAILED
from durable_installs.contracts.load import (
    LoadModelActivityInput,
    LoadModelActivityResult,
    LoadOptions,
)
from durable_installs.contracts.names import LOAD_MODEL_ACTIVITY
from durable_installs.protocol import backend_grpc
from durable_installs.protocol.backend_grpc import (
    BackendCallError,
    BackendState,
    BackendStatus,
    ModelOptions,
)

STATUS_TIMEOUT = 2.0
ALREADY_LOADED = "already loaded"


def model_options(options: LoadOptions, model_path: str, relative: str) -> ModelOptions:
    """LocalAI's ``ModelOptions`` for a staged model: ``Model`` the name relative to the
    models directory, ``ModelFile`` its node-local path, ``ModelPath`` the directory."""
    models_dir = ""
    if model_path.endswith("/" + relative):
        models_dir = model_path[: -len(relative) - 1]
    return ModelOptions(
        model=relative,
        model_file=model_path,
        model_path=models_dir,
        context_size=options.context_size,
        threads=options.threads,
        n_gpu_layers=options.gpu_layers,
        f16_memory=options.f16_memory,
        mmap=options.mmap,
        embeddings=options.embeddings,
        options=[f"{key}:{value}" for key, value in options.extra.items()],
    )


def _failed(message: str) -> ApplicationError:
    return ApplicationError(message, type=LOAD_FAILED, non_retryable=True)


async def _status(address: str) -> BackendStatus | None:
    """The backend's ``Status``, or None when it does not answer it in time."""
    try:
        return await backend_grpc.status(address, call_timeout=STATUS_TIMEOUT)
    except BackendCallError as err:
        if err.code == "UNIMPLEMENTED":
            return BackendStatus(state=BackendState.UNKNOWN)
        return None


class _Watch:
    """When the backend last showed it is alive."""

    def __init__(self) -> None:
        self.alive_at = time.monotonic()
        self.state = BackendState.UNKNOWN

    def saw(self, status: BackendStatus | None) -> None:
        if status is not None:
            self.alive_at = time.monotonic()
            self.state = status.state

    def silent_for(self) -> float:
        return time.monotonic() - self.alive_at


@activity.defn(name=LOAD_MODEL_ACTIVITY)
async def load_model(input: LoadModelActivityInput) -> LoadModelActivityResult:
    """Load the model into the backend at ``input.address``; its message, or ``LoadFailed``."""
    started = time.monotonic()
    address = input.address
    first = await _status(address)
    if (
        first is not None
        and first.state is BackendState.READY
        and (input.reuse_loaded or activity.info().attempt > 1)
    ):
        return LoadModelActivityResult(message=ALREADY_LOADED, already_loaded=True)
    watch = _Watch()
    watch.saw(first)
    if first is not None and first.state is BackendState.BUSY and activity.info().attempt > 1:
        await _wait_while_busy(input, watch)  # the previous attempt's LoadModel is still running
        if watch.state is BackendState.READY:
            return LoadModelActivityResult(
                message=ALREADY_LOADED, seconds=time.monotonic() - started
            )
    options = model_options(input.options, input.model_path, input.model_relative)
    call = asyncio.create_task(
        backend_grpc.load_model(address, options, call_timeout=input.timeout_seconds)
    )
    try:
        while not call.done():
            done, _ = await asyncio.wait({call}, timeout=_poll_interval(input))
            if done:
                break
            watch.saw(await _status(address))
            activity.heartbeat(watch.state.value)
            if watch.silent_for() > input.stall_seconds:
                raise _failed(
                    f"the backend at {address} stopped answering while loading "
                    f"{input.model_relative} (no Status for {input.stall_seconds:g}s): stalled"
                )
        result = call.result()
    except BackendCallError as err:
        if err.timed_out:
            raise _failed(
                f"LoadModel of {input.model_relative} on {address} did not finish within "
                f"{input.timeout_seconds:g}s (the deadline scales with the model's size: "
                "load_base_seconds + load_seconds_per_gib)"
            ) from None
        raise _failed(
            f"LoadModel of {input.model_relative} on {address} got no answer: {err.code}"
        ) from None
    finally:
        if not call.done():
            call.cancel()
            with contextlib.suppress(BaseException):
                await call
    if not result.success:
        raise _failed(
            f"the backend could not load {input.model_relative}: "
            f"{result.message or '(it gave no reason)'}"
        )
    return LoadModelActivityResult(message=result.message, seconds=time.monotonic() - started)


async def _wait_while_busy(input: LoadModelActivityInput, watch: _Watch) -> None:
    deadline = time.monotonic() + input.timeout_seconds
    while watch.state is BackendState.BUSY and time.monotonic() < deadline:
        await asyncio.sleep(_poll_interval(input))
        watch.saw(await _status(input.address))
        activity.heartbeat(watch.state.value)
        if watch.silent_for() > input.stall_seconds:
            raise _failed(
                f"the backend at {input.address} stopped answering while loading "
                f"{input.model_relative}: stalled"
            )


def _poll_interval(input: LoadModelActivityInput) -> float:
    return max(0.2, min(2.0, input.stall_seconds / 4))
