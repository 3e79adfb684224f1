"""The REST transport: httpx against the gateway's ``/v1`` API (design section 4), output
as Server-Sent Events (httpx-sse).

Every error answer is the project's body ``{"error": {"code", "message", "details"}}``;
it becomes the class of its code (``gateway.errors.from_wire``), with ``Retry-After`` for
4290. A failure to reach the gateway, or an answer that is not the gateway's, is
:class:`TransportError`.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import SSEError, aconnect_sse

from gateway.client._errors import TransportError, retry_after_s
from gateway.client._models import OutputChunk, ResourceUsage, Task, TaskPage, TaskResult
from gateway.errors import GatewayError, from_wire

__all__ = ["RestTransport"]

T = TypeVar("T")

_KINDS = {"STDOUT": "stdout", "STDERR": "stderr", "EVENT": "event", "EXIT_CODE": "exit"}


class RestTransport:
    """Calls of one gateway over HTTP(S).

    Args:
        base_url: ``http://host:port`` or ``https://host:port``.
        token: API key or JWT, sent as a bearer token; None sends none.
        verify: an ``ssl.SSLContext`` (CA, client certificate) or True for the system CAs.
        timeout_s: connect and read timeout of each call, seconds (a stream's read timeout
            is unbounded: output may pause for as long as the command runs).
    """

    def __init__(self, base_url: str, token: str | None, verify: ssl.SSLContext | bool, timeout_s: float) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, verify=verify,
                                       timeout=httpx.Timeout(timeout_s))

    async def close(self) -> None:
        await self._http.aclose()

    async def execute(self, body: dict[str, Any], wait_s: float) -> Task:
        extra: dict[str, Any] = {}
        if wait_s:  # the answer may take the wait, plus the usual
            extra = {"params": {"wait": wait_s}, "timeout": httpx.Timeout((self._http.timeout.read or 0) + wait_s)}
        answer = await self._call("POST", "/v1/execute", json=body, **extra)
        if "task_info" in answer:
            return _shaped(_task, answer)
        return _shaped(lambda a: Task(a["task_id"], a["status"], a["created_at"]), answer)

    async def get_task(self, task_id: str) -> Task:
        return _shaped(_task, await self._call("GET", f"/v1/tasks/{quote(task_id, safe='')}"))

    async def cancel_task(self, task_id: str) -> Task:
        return _shaped(_task, await self._call("POST", f"/v1/tasks/{quote(task_id, safe='')}/cancel"))

    async def list_tasks(self, status: str | None, since: str | None, limit: int, page_token: str | None) -> TaskPage:
        params = {k: v for k, v in (("status", status), ("since", since), ("limit", limit),
                                    ("page_token", page_token)) if v is not None}
        answer = await self._call("GET", "/v1/tasks", params=params)
        return _shaped(lambda a: TaskPage(tuple(_task({"task_info": t, "result": None}) for t in a["tasks"]),
                                          a.get("next_page_token")), answer)

    async def output(self, task_id: str, offset: int) -> AsyncIterator[OutputChunk]:
        url = f"/v1/tasks/{quote(task_id, safe='')}/stream"
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        try:
            async with aconnect_sse(self._http, "GET", url, params={"offset": offset}, timeout=timeout) as source:
                if source.response.status_code != 200:
                    await source.response.aread()
                    raise _error(source.response)
                async for event in source.aiter_sse():
                    if not event.data:  # the opening "retry:" field
                        continue
                    body = json.loads(event.data)
                    if event.event == "error":
                        raise from_wire(body)
                    yield OutputChunk(body["offset"], _KINDS.get(body["type"], body["type"].lower()),
                                      base64.b64decode(body["data"]), body["timestamp_ms"])
        except (httpx.TransportError, SSEError, ValueError, KeyError) as exc:
            raise TransportError(f"the output stream of {task_id} broke: {exc}") from exc

    async def read_file(self, workspace: str, path: str) -> bytes:
        response = await self._send("GET", _file_url(path), params={"workspace": workspace})
        return response.content

    async def write_file(self, workspace: str, path: str, data: bytes, mode: int | None, create_dirs: bool) -> int:
        params: dict[str, Any] = {"workspace": workspace, "create_dirs": "true" if create_dirs else "false"}
        if mode is not None:
            params["mode"] = f"{mode:04o}"
        answer = await self._call("PUT", _file_url(path), params=params, content=data,
                                  headers={"Content-Type": "application/octet-stream"})
        return _shaped(lambda a: int(a["bytes_written"]), answer)

    async def delete_file(self, workspace: str, path: str, recursive: bool) -> None:
        await self._call("DELETE", _file_url(path),
                         params={"workspace": workspace, "recursive": "true" if recursive else "false"})

    async def _call(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, url, **kwargs)
        try:
            body = response.json()
        except ValueError as exc:
            raise TransportError(f"{method} {url}: the answer is not JSON") from exc
        if not isinstance(body, dict):
            raise TransportError(f"{method} {url}: the answer is not a JSON object")
        return body

    async def _send(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:  # the message names the failure, never a header's value
            reason = type(exc).__name__ if isinstance(exc, httpx.LocalProtocolError) else str(exc) or \
                type(exc).__name__
            raise TransportError(f"cannot reach the gateway at {self._http.base_url}: {reason}") from None
        if response.status_code >= 400:
            raise _error(response)
        return response


def _shaped(read: Callable[[Any], T], answer: Any) -> T:
    """``read(answer)``; an answer that is not the shape the gateway sends (another API
    version, a proxy's JSON) is a TransportError, not a KeyError."""
    try:
        return read(answer)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise TransportError(f"the gateway's answer lacks what this client reads: {type(exc).__name__} {exc}") \
            from None


def _error(response: httpx.Response) -> GatewayError | TransportError:
    """The error of an answer >= 400: the project's error body, else a TransportError (a
    proxy's answer, not the gateway's)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("error"), dict)):
        return TransportError(f"HTTP {response.status_code} without the gateway's error body")
    return from_wire(body, retry_after_s=retry_after_s(response.headers.get("retry-after")))


def _file_url(path: str) -> str:
    """The route of a workspace path. ``.`` and ``..`` segments go percent-encoded: as plain
    dots, the URL's dot-segment removal (RFC 3986 5.2.4) would send ``../tasks/ID`` to
    another route; encoded, the gateway sees the path as given and refuses it (3003)."""
    segments = [quote(seg, safe="") if seg not in (".", "..") else "%2E" * len(seg)
                for seg in path.lstrip("/").split("/")]
    return "/v1/files/" + "/".join(segments)


def _task(body: Mapping[str, Any]) -> Task:
    info = body["task_info"]
    result = body.get("result")
    return Task(
        task_id=info["task_id"], status=info["status"], created_at=info["created_at"],
        started_at=info.get("started_at"), completed_at=info.get("completed_at"),
        metadata=dict(info.get("metadata") or {}), task_type=info.get("task_type", "COMMAND"),
        result=None if result is None else TaskResult(
            exit_code=result["exit_code"], stdout=result["stdout"], stderr=result["stderr"],
            usage=ResourceUsage(**result["resource_usage"]), execution_time_ms=result["execution_time_ms"],
            stdout_truncated=result["stdout_truncated"], stderr_truncated=result["stderr_truncated"],
            limit_reason=result.get("limit_reason"), error=result.get("error"),
        ),
    )
