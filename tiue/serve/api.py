"""The HTTP API of `tiue serve` (FastAPI routes beside the Gradio page).

    POST /api/generate      JSON {"prompt", "seed", "count", "steps", "height", "width"} ->
                            JSON {"images": [base64 PNG, ...], "seeds", "prompts", "seconds", "batch_sizes"}
    POST /api/generate.png  the same request for one image -> the PNG itself
    GET  /api/stats         passes, images, mean batch size and the batch-size histogram
    GET  /api/health        {"status": "ok", "model": ...}

A bad request gets a 4xx whose JSON body is {"error": "<one line>"}; the line is also in the
X-Tiue-Error header. Each generate response names the sizes of the passes its images were made
in (X-Tiue-Batch-Sizes), so a client can see its request share a pass with others.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' `Request` annotations at run time.

import asyncio
import base64
import io
import time

from tiue.serve.batcher import Batcher
from tiue.serve.requests import GenerateRequest, Limits, ModelBounds, RequestError, parse_json, parse_request

__all__ = ["add_api_routes", "png_bytes", "submit_and_wait"]


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _error_response(error: RequestError):
    from fastapi.responses import JSONResponse

    message = str(error)
    # Header values are latin-1 and one line: keep the text readable, never raise while reporting.
    header = message.encode("ascii", "replace").decode("ascii").replace("\r", " ").replace("\n", " ")
    return JSONResponse({"error": message}, status_code=error.status, headers={"X-Tiue-Error": header})


async def _read_body(request, limits: Limits) -> bytes:
    """The body, refused with 413 as soon as it passes the limit (a huge upload is not buffered)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
        raise RequestError(f"request body: {declared} bytes, at most {limits.max_body_bytes} accepted", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise RequestError(f"request body: more than {limits.max_body_bytes} bytes, at most "
                               f"{limits.max_body_bytes} accepted", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


async def submit_and_wait(batcher: Batcher, request: GenerateRequest):
    """Queue the request and wait for its pass(es) without blocking the event loop. A client
    that disconnects meanwhile only loses its answer: the pass runs on for the others."""
    pending = batcher.submit(request)
    images = await asyncio.wrap_future(pending.future)
    return images, pending


def add_api_routes(app, batcher: Batcher, limits: Limits, bounds: ModelBounds, model_name: str) -> None:
    from fastapi import Request
    from fastapi.responses import JSONResponse, Response

    async def checked(http_request: Request) -> GenerateRequest:
        return parse_request(parse_json(await _read_body(http_request, limits), limits), limits, bounds)

    def headers(pending, seconds: float) -> dict[str, str]:
        return {"X-Tiue-Batch-Sizes": ",".join(map(str, pending.batch_sizes)), "X-Tiue-Seconds": f"{seconds:.4f}"}

    @app.post("/api/generate")
    async def generate(http_request: Request):
        start = time.perf_counter()
        try:
            request = await checked(http_request)
        except RequestError as error:
            return _error_response(error)
        images, pending = await submit_and_wait(batcher, request)
        seconds = time.perf_counter() - start
        body = {
            "images": [base64.b64encode(png_bytes(image)).decode("ascii") for image in images],
            "prompts": list(request.prompts),
            "seeds": list(request.seeds),
            "steps": request.steps,
            "seconds": seconds,
            "batch_sizes": pending.batch_sizes,
        }
        return JSONResponse(body, headers=headers(pending, seconds))

    @app.post("/api/generate.png")
    async def generate_png(http_request: Request):
        start = time.perf_counter()
        try:
            request = await checked(http_request)
            if request.count != 1:
                raise RequestError(f"count: /api/generate.png returns one image, got a request for {request.count}; "
                                   "use /api/generate for more")
        except RequestError as error:
            return _error_response(error)
        images, pending = await submit_and_wait(batcher, request)
        return Response(png_bytes(images[0]), media_type="image/png",
                        headers=headers(pending, time.perf_counter() - start))

    @app.get("/api/stats")
    async def stats():
        return {**batcher.stats.as_dict(), "max_batch_size": batcher.max_batch_size,
                "max_wait_ms": batcher.max_wait * 1000}

    @app.get("/api/health")
    async def health():
        return {"status": "ok", "model": model_name}
