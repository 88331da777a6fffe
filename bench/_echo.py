"""A bare ASGI app for the transport's floor: it reads the whole body and answers with as many
zero bytes as the ``X-Answer-Bytes`` header asks, and does nothing else (no bncheck).

    python -m uvicorn bench._echo:app --port PORT
"""

from __future__ import annotations

from typing import Any

_ANSWERS: dict[int, bytes] = {}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    size = int(dict(scope["headers"]).get(b"x-answer-bytes", b"0"))
    answer = _ANSWERS.setdefault(size, bytes(size))
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", str(size).encode()), (b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": answer})
