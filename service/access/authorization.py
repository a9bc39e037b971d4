"""Authorization: whether the authenticated caller may call this RPC. Default deny.

A CreditsService RPC needs an entry in the caller's `rpcs`; server reflection is open to
every authenticated caller (it describes the contract, nothing more); health is open to
anyone. Every other method is refused.
"""

import logging
from collections.abc import Callable
from typing import Any

import grpc

from service.access import errors
from service.access.context import authenticated_caller, current_caller
from service.access.interceptors import Interceptor, call_next, credits_rpc, is_health

log = logging.getLogger("credits.auth")

REFLECTION_METHOD_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class Authorize(Interceptor):
    def _allowed(self, method_name: str) -> bool:
        if is_health(method_name):
            return True
        caller = authenticated_caller()
        rpc = credits_rpc(method_name)
        if rpc is not None:
            return caller.may_call(rpc)
        return method_name.startswith(REFLECTION_METHOD_PREFIXES)

    async def intercept(
        self,
        method: Callable[..., Any],
        request_or_iterator: Any,
        ctx: grpc.aio.ServicerContext,
        method_name: str,
    ) -> Any:
        if not self._allowed(method_name):
            log.warning(
                "permission denied", extra={"method": method_name, "caller": current_caller()}
            )
            raise errors.PermissionDenied()
        return await call_next(method, request_or_iterator, ctx)
