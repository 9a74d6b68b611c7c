"""The aiohttp application: routes, control endpoints (``/_sim/...``) and the 404 fallback.

Invariants:
- Every path outside the known routes answers 404 in the provider's error shape (Anthropic's
  when the request carries ``anthropic-version``, else OpenAI's); ``/v1/...`` paths count in
  ``stats["requests"]``.
- Control endpoints never count in the stats.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .anthropic import AnthropicMessagesAPI
from .batches_anthropic import AnthropicBatchesAPI
from .batches_openai import OpenAIBatchesAPI
from .files_openai import OpenAIFilesAPI
from .openai_chat import OpenAIChatAPI
from .responses import anthropic_error_body, json_response, openai_error_body
from .state import SimState

#: Bodies up to this size are accepted (the largest batch upload plus multipart overhead).
CLIENT_MAX_SIZE = 300 * 1024 * 1024


class ControlAPI:
    """``GET /_sim/stats``, ``POST /_sim/reset``, ``GET|POST /_sim/config``."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(self.state.stats.snapshot())

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return json_response({"ok": True})

    async def get_config(self, request: web.Request) -> web.Response:
        return json_response(self.state.config.to_dict())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("config body must be a JSON object")
            config = self.state.config.with_changes(**changes)
        except (ValueError, TypeError) as exc:
            return json_response(openai_error_body(str(exc), "invalid_request_error"), 400)
        self.state.set_config(config)
        return json_response(config.to_dict())


def build_app(state: SimState) -> web.Application:
    """The simulator's aiohttp application over `state`."""
    app = web.Application(client_max_size=CLIENT_MAX_SIZE)
    chat = OpenAIChatAPI(state)
    messages = AnthropicMessagesAPI(state)
    files = OpenAIFilesAPI(state)
    batches = OpenAIBatchesAPI(state)
    msg_batches = AnthropicBatchesAPI(state)
    control = ControlAPI(state)
    add = app.router.add_route
    add("POST", "/v1/chat/completions", chat.chat_completions)
    add("POST", "/chat/completions", chat.chat_completions)
    add("GET", "/v1/models", chat.models)
    add("GET", "/v1/models/{model}", chat.model)
    add("POST", "/v1/messages", messages.messages)
    # OpenAI files and batches
    add("POST", "/v1/files", files.create)
    add("GET", "/v1/files", files.list)
    add("GET", "/v1/files/{file_id}", files.retrieve)
    add("GET", "/v1/files/{file_id}/content", files.content)
    add("DELETE", "/v1/files/{file_id}", files.delete)
    add("POST", "/v1/batches", batches.create)
    add("GET", "/v1/batches", batches.list)
    add("GET", "/v1/batches/{batch_id}", batches.retrieve)
    add("POST", "/v1/batches/{batch_id}/cancel", batches.cancel)
    # Anthropic message batches
    add("POST", "/v1/messages/batches", msg_batches.create)
    add("GET", "/v1/messages/batches", msg_batches.list)
    add("GET", "/v1/messages/batches/{batch_id}", msg_batches.retrieve)
    add("GET", "/v1/messages/batches/{batch_id}/results", msg_batches.results)
    add("POST", "/v1/messages/batches/{batch_id}/cancel", msg_batches.cancel)
    add("DELETE", "/v1/messages/batches/{batch_id}", msg_batches.delete)
    # control
    add("GET", "/_sim/stats", control.stats)
    add("POST", "/_sim/reset", control.reset)
    add("GET", "/_sim/config", control.get_config)
    add("POST", "/_sim/config", control.set_config)
    add("GET", "/_sim/health", _health)

    async def not_found(request: web.Request) -> web.Response:
        return _not_found(state, request)

    add("*", "/{tail:.*}", not_found)
    return app


async def _health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


def _not_found(state: SimState, request: web.Request) -> web.Response:
    api = request.path.startswith("/v1/")
    if api:
        state.stats.count_request()
        state.stats.record(404)
    if request.headers.get("anthropic-version"):
        body: Any = anthropic_error_body("not_found_error", f"Not found: {request.path}")
    else:
        body = openai_error_body(
            f"Unknown request URL: {request.method} {request.path}. Please check the URL for "
            "typos, or see the docs at https://platform.openai.com/docs/api-reference/.",
            "invalid_request_error",
            None,
            "unknown_url",
        )
    return json_response(body, 404)
