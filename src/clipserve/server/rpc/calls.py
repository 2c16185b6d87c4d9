"""What every ``clipserve.v1.Clip`` call goes through: the API key check, the status code its
error maps to, and its line in the metrics — in one place, so no RPC can forget one."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

from clipserve.server.rpc.auth import check_key
from clipserve.server.rpc.codes import failure_of
from clipserve.server.state import ServerState

ResponseT = TypeVar("ResponseT")
# A string: the stubs make ServicerContext generic, the runtime class is not.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class Calls:
    """Runs RPC handlers: ``await calls.unary(...)`` and ``calls.stream(...)``."""

    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def unary(
        self, method: str, context: Context, handler: Callable[[], Awaitable[ResponseT]]
    ) -> ResponseT:
        """The response of ``handler()``, or the call aborted with the status of its error."""
        started = time.perf_counter()
        # A call that ends neither way was cancelled: the client left or its deadline passed.
        code = grpc.StatusCode.CANCELLED
        self.state.metrics.grpc_in_progress.inc()
        try:
            try:
                check_key(context.invocation_metadata(), self.state.settings.api_keys)
                response = await handler()
            except Exception as exc:
                failure = failure_of(exc, method)
                code = failure.code
                await context.abort(failure.code, failure.message, failure.trailers)
            code = grpc.StatusCode.OK
            return response
        finally:
            self._finished(method, code, started)

    async def stream(
        self,
        method: str,
        context: Context,
        handler: Callable[[], AsyncGenerator[ResponseT, None]],
    ) -> AsyncIterator[ResponseT]:
        """The responses of ``handler()``; an error that ends the whole stream aborts it.

        (Errors of single items are the handler's business: they are responses.)
        """
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED
        self.state.metrics.grpc_in_progress.inc()
        try:
            try:
                check_key(context.invocation_metadata(), self.state.settings.api_keys)
                async with contextlib.aclosing(handler()) as responses:
                    async for response in responses:
                        yield response
            except Exception as exc:
                failure = failure_of(exc, method)
                code = failure.code
                await context.abort(failure.code, failure.message, failure.trailers)
            code = grpc.StatusCode.OK
        finally:
            self._finished(method, code, started)

    def _finished(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self.state.metrics.grpc_in_progress.dec()
        self.state.metrics.observe_rpc(method, code.name, time.perf_counter() - started)
