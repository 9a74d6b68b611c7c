"""Server-sent-event renderings of finished responses (``"stream": true``).

Invariants: the concatenated deltas equal the non-streamed content, and the final events carry
the same finish/stop reason and usage as the non-streamed response would.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


def _pieces(text: str, size: int = 24) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


async def _open(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = "text/event-stream"
    response.headers["Cache-Control"] = "no-cache"
    await response.prepare(request)
    return response


async def stream_chat_completion(
    request: web.Request,
    completion: dict[str, Any],
    headers: dict[str, str],
    include_usage: bool,
) -> web.StreamResponse:
    """Send a ``chat.completion`` as ``chat.completion.chunk`` events and ``[DONE]``."""
    response = await _open(request, headers)
    base = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "system_fingerprint": completion.get("system_fingerprint"),
    }
    out = bytearray()

    def event(choices: list[dict[str, Any]], usage: Any = None) -> None:
        chunk = {**base, "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        out.extend(b"data: " + orjson.dumps(chunk) + b"\n\n")

    for choice in completion["choices"]:
        index = choice["index"]
        message = choice["message"]
        event(
            [
                {
                    "index": index,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        if message.get("tool_calls"):
            event(
                [
                    {
                        "index": index,
                        "delta": {
                            "tool_calls": [{"index": 0, **call} for call in message["tool_calls"]]
                        },
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ]
            )
        else:
            for piece in _pieces(message.get("content") or ""):
                event(
                    [
                        {
                            "index": index,
                            "delta": {"content": piece},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
        event(
            [
                {
                    "index": index,
                    "delta": {},
                    "logprobs": None,
                    "finish_reason": choice["finish_reason"],
                }
            ]
        )
    if include_usage:
        event([], completion["usage"])
    out.extend(b"data: [DONE]\n\n")
    await response.write(bytes(out))
    await response.write_eof()
    return response


async def stream_message(
    request: web.Request, message: dict[str, Any], headers: dict[str, str]
) -> web.StreamResponse:
    """Send an Anthropic ``message`` as Messages streaming events."""
    response = await _open(request, headers)
    out = bytearray()

    def event(name: str, data: dict[str, Any]) -> None:
        out.extend(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")

    start = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**message["usage"], "output_tokens": 1},
    }
    event("message_start", {"type": "message_start", "message": start})
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _pieces(block["text"]):
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        else:
            event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {**block, "input": {}},
                },
            )
            partial = orjson.dumps(block.get("input", {})).decode()
            event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": partial},
                },
            )
        event("content_block_stop", {"type": "content_block_stop", "index": index})
    event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {"output_tokens": message["usage"]["output_tokens"]},
        },
    )
    event("message_stop", {"type": "message_stop"})
    await response.write(bytes(out))
    await response.write_eof()
    return response
