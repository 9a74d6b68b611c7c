"""OpenAI Files (``/v1/files``), in memory.

Invariants: a stored file's bytes never change; ids are unique; batch inputs larger than
``max_file_bytes`` are refused with 413 while uploading (the body is read in chunks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .openai_chat import check_openai_auth, unauthorized
from .responses import json_response, openai_error_body
from .state import SimState

FILE_PURPOSES = ("batch", "batch_output", "fine-tune", "assistants", "user_data", "vision", "evals")


@dataclass
class StoredFile:
    id: str
    filename: str
    purpose: str
    data: bytes
    created_at: int

    def to_object(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": len(self.data),
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }


def store_file(state: SimState, filename: str, purpose: str, data: bytes) -> StoredFile:
    """Keep `data` as a new file and return it."""
    stored = StoredFile(
        id=state.ids.make("file-"),
        filename=filename,
        purpose=purpose,
        data=data,
        created_at=int(time.time()),
    )
    state.files[stored.id] = stored
    state.stats.file_created()
    return stored


def openai_error(
    message: str, param: str | None = None, status: int = 400, code: str | None = None
) -> web.Response:
    """An ``invalid_request_error`` response in OpenAI's error shape."""
    return json_response(openai_error_body(message, "invalid_request_error", param, code), status)


# --------------------------------------------------------------------------- files


class OpenAIFilesAPI:
    """``/v1/files``: upload (multipart), list, retrieve, content, delete."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def _begin(self, request: web.Request) -> web.Response | None:
        self.state.stats.count_request()
        if not check_openai_auth(self.state.config, request):
            self.state.stats.record(401)
            return unauthorized()
        return None

    def _fail(self, message: str, param: str | None = None, status: int = 400) -> web.Response:
        self.state.stats.record(status)
        return openai_error(message, param, status)

    async def create(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        config = self.state.config
        if not request.content_type.startswith("multipart/"):
            return self._fail("Expected a multipart/form-data body with 'purpose' and 'file'.")
        reader = await request.multipart()
        purpose: str | None = None
        filename = "upload.jsonl"
        data: bytearray | None = None
        limit = config.max_file_bytes
        while True:
            part = await reader.next()
            if part is None:
                break
            if part.name == "purpose":
                purpose = (await part.text()).strip()  # type: ignore[union-attr]
            elif part.name == "file":
                filename = part.filename or filename  # type: ignore[union-attr]
                data = bytearray()
                while True:
                    chunk = await part.read_chunk(1 << 20)  # type: ignore[union-attr]
                    if not chunk:
                        break
                    data += chunk
                    if len(data) > limit:
                        return self._fail(
                            f"File is too large: the maximum size is {limit} bytes.",
                            "file",
                            413,
                        )
            else:
                await part.release()
        if purpose is None:
            return self._fail("Missing required parameter: 'purpose'.", "purpose")
        if purpose not in FILE_PURPOSES:
            return self._fail(f"Invalid value for 'purpose': {purpose!r}.", "purpose")
        if data is None:
            return self._fail("Missing required parameter: 'file'.", "file")
        stored = self.store(filename, purpose, bytes(data))
        self.state.stats.record(200)
        return json_response(stored.to_object())

    def store(self, filename: str, purpose: str, data: bytes) -> StoredFile:
        return store_file(self.state, filename, purpose, data)

    def _lookup(self, request: web.Request) -> StoredFile | web.Response:
        file_id = request.match_info["file_id"]
        stored = self.state.files.get(file_id)
        if stored is None:
            return self._fail(f"No such File object: {file_id}", "id", 404)
        return stored

    async def list(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        purpose = request.query.get("purpose")
        files = [
            f for f in reversed(self.state.files.values()) if not purpose or f.purpose == purpose
        ]
        self.state.stats.record(200)
        return json_response(
            {"object": "list", "data": [f.to_object() for f in files], "has_more": False}
        )

    async def retrieve(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        stored = self._lookup(request)
        if isinstance(stored, web.Response):
            return stored
        self.state.stats.record(200)
        return json_response(stored.to_object())

    async def content(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        stored = self._lookup(request)
        if isinstance(stored, web.Response):
            return stored
        self.state.stats.record(200)
        return web.Response(body=stored.data, content_type="application/octet-stream")

    async def delete(self, request: web.Request) -> web.Response:
        denied = self._begin(request)
        if denied is not None:
            return denied
        stored = self._lookup(request)
        if isinstance(stored, web.Response):
            return stored
        del self.state.files[stored.id]
        self.state.stats.record(200)
        return json_response({"id": stored.id, "object": "file", "deleted": True})
