"""Routes whose JSON bodies are parsed by pydantic-core's parser instead of the standard library's,
and whose well-formed requests skip FastAPI's per-request machinery when nothing needs it.

Parsing a search request (384 floats) took ~125 us with `json.loads`, ~10% of the request; Rust's
parser takes ~14 us. It is a fast path only: any body it refuses (invalid JSON, UTF-16, a lone
surrogate, nesting past its limit) is parsed again by `json.loads`, so every error and edge case
answers exactly as FastAPI's own parsing does. Both keep the last of duplicate keys, give big
integers exactly and read NaN/Infinity (which the schemas then refuse with a clear message).

The direct call is the same idea one level up. Skipping FastAPI's request handler (content-type
parsing, the endpoint context for error messages, telemetry hooks, the dependency solver), with
one dependency and search tried first, took 12-17% off a search's server CPU at 1M vectors
(benchmarks/results/search_ab.md). An endpoint of the
plain shape below gets a well-formed request's arguments directly: its body validated by FastAPI's
own field (the same validator, location and options), the services, its path parameters. Anything
else (another content type, a body cut off or not parsing or validating, dependency overrides, a
dependency added where the router is included) goes through FastAPI's handler as before, so
every error answers exactly as it did."""

from __future__ import annotations

import json
import typing
from collections.abc import Awaitable, Callable
from typing import Any

import fastapi.routing
import pydantic_core
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.deps import get_services


class FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = pydantic_core.from_json(body, allow_inf_nan=True)
            except ValueError:
                self._json = json.loads(body)  # FastAPI maps its errors as for any route
        return self._json


class DirectCall:
    """The arguments of a well-formed request to an endpoint of the plain shape: one JSON body
    model, `ServicesDep` parameters, unconstrained `str` path parameters and nothing else (no
    query, header or cookie parameters, no Request, no other dependency), returning a Response
    (so there is no response model to serialise)."""

    def __init__(self, route: APIRoute) -> None:
        effective = _as_built(route)
        dependant = effective.dependant
        self.endpoint = dependant.call
        self.body = dependant.body_params[0]
        self.services = [dependency.name for dependency in dependant.dependencies]
        self.path = [(field.name, field.alias) for field in dependant.path_params]
        self.overrides = effective.dependency_overrides_provider

    @staticmethod
    def fits(route: APIRoute) -> bool:
        d = _as_built(route).dependant
        special = (
            d.request_param_name,
            d.websocket_param_name,
            d.http_connection_param_name,
            d.response_param_name,
            d.background_tasks_param_name,
            d.security_scopes_param_name,
        )
        returns = typing.get_type_hints(route.endpoint).get("return")
        return (
            len(d.body_params) == 1
            and not (d.query_params or d.header_params or d.cookie_params)
            and all(name is None for name in special)
            and all(dep.call is get_services and not dep.dependencies for dep in d.dependencies)
            and all(f.field_info.annotation is str and not f.field_info.metadata for f in d.path_params)
            and isinstance(returns, type)
            and issubclass(returns, Response)
        )

    async def arguments(self, request: Request) -> dict[str, Any] | None:
        """The endpoint's keyword arguments, or None for FastAPI's handler to answer."""
        if request.headers.get("content-type") != "application/json" or getattr(
            self.overrides, "dependency_overrides", None
        ):
            return None
        try:
            raw = await request.body()
        except ClientDisconnect:  # gone mid-body (or cut off at the size cap): FastAPI's handler answers
            return None
        try:
            data = pydantic_core.from_json(raw, allow_inf_nan=True)
        except ValueError:  # not JSON that pydantic-core reads: FastAPI's handler says why
            return None
        value, errors = self.body.validate(data, {}, loc=("body",))
        if errors:
            return None
        services = await get_services(request)
        return {
            self.body.name: value,
            **dict.fromkeys(self.services, services),
            **{name: request.path_params[alias] for name, alias in self.path},
        }


def _as_built(route: APIRoute) -> Any:
    """The route as FastAPI builds its handler. Since FastAPI 0.13x an included route's handler is
    built while a context holds the inclusion's own dependencies and overrides provider; before,
    inclusion copied the route with both merged in. Read the same one, so a dependency added where
    a router is included is never skipped (tests/app/test_json_route.py checks it is not)."""
    context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
    context = context_var.get() if context_var is not None else None
    return context if context is not None and getattr(context, "original_route", None) is route else route


class FastJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()
        direct = DirectCall(self) if DirectCall.fits(self) else None

        async def with_fast_json(request: Request) -> Response:
            request = FastJSONRequest(request.scope, request.receive)
            if direct is not None and (arguments := await direct.arguments(request)) is not None:
                if (learned := request.scope.get(LEARNED_SCOPE_KEY)) is not None:
                    learned.setdefault(self.path, (request.scope["route"], direct))
                return await direct.endpoint(**arguments)
            return await handler(request)  # the body read above is kept on the request

        return with_fast_json


# The key under which `DirectCallMiddleware` hands its table down the request's scope: the route
# handler below records its direct call there, as FastAPI built it for this app.
LEARNED_SCOPE_KEY = "tessera.direct_calls"


class DirectCallMiddleware:
    """The direct call one level further up: a request to one of `paths` (route templates, POST)
    that the router has sent to a direct call before is answered here, without the router and the
    per-route layers under this middleware (exception middleware, exit stack, route matching,
    request/response wrappers: ~12% of a 100k search's server CPU). The call is the one the route's
    own handler made (recorded on its first request, so inclusion dependencies and the overrides
    provider are the app's own), and it answers only what the handler's direct call would: a body
    it cannot read, parse or validate, or dependency overrides, goes down to the router with the
    body replayed, so every error answers exactly as before. Errors the endpoint raises get the
    app's exception handlers as the exception middleware would give them; anything else rises to
    the server-error middleware above, as before.

    Innermost of the app's own middleware: access control, metrics (which read `scope["route"]`,
    set here as the router sets it), the payload cap and cancel-on-disconnect all still apply. The
    paths must be ones no earlier route takes (tests/app/test_json_route.py checks the app's)."""

    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = [(compile_path(path)[0], path) for path in paths]
        self.learned: dict[str, tuple[BaseRoute, DirectCall]] = {}

    def _learned_call(self, path: str) -> tuple[BaseRoute, DirectCall, dict[str, str]] | None:
        """(route, its direct call, path parameters) for a request to `path`, or None when no
        template of ours matches it or its route has not been learned yet."""
        for regex, template in self.paths:
            if (match := regex.match(path)) is not None:
                if (call := self.learned.get(template)) is None:
                    return None
                return call[0], call[1], match.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        learned = self._learned_call(scope["path"])
        if learned is None:  # not ours, or not yet learned: the router's
            scope[LEARNED_SCOPE_KEY] = self.learned
            await self.app(scope, receive, send)
            return
        route, direct, path_params = learned
        scope["route"], scope["endpoint"], scope["path_params"] = route, direct.endpoint, path_params
        consumed: list[Message] = []

        async def recording_receive() -> Message:
            message = await receive()
            consumed.append(message)
            return message

        request = Request(scope, recording_receive)
        arguments = await direct.arguments(request)
        if arguments is None:
            replay = iter(consumed)

            async def replaying_receive() -> Message:
                return next(replay, None) or await receive()

            await self.app(scope, replaying_receive, send)
            return
        try:
            response = await direct.endpoint(**arguments)
        except Exception as exc:
            handler = _exception_handler(scope["app"], exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)


def _exception_handler(app: Any, exc: Exception) -> Callable[..., Awaitable[Response]] | None:
    """The handler Starlette's exception middleware would give `exc` (by its classes, nearest
    first), or None for one that middleware leaves to the server-error middleware."""
    handlers = app.exception_handlers
    if isinstance(exc, HTTPException) and exc.status_code in handlers:
        return handlers[exc.status_code]
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
