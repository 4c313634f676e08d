"""One process that serves a model: the HTTP API and the Gradio page on one port, over one batcher."""

from __future__ import annotations

import os
import socket

from tiue.serve.batcher import Batcher
from tiue.serve.model import ServedModel
from tiue.serve.requests import Limits

__all__ = ["build_app", "bind", "serve"]


def build_app(model: ServedModel, batcher: Batcher, limits: Limits):
    """The FastAPI app: /api/* routes, and the page at /."""
    import gradio as gr
    from fastapi import FastAPI

    from tiue.serve.api import add_api_routes
    from tiue.serve.page import build_page

    bounds = model.bounds()
    app = FastAPI(title="tiue serve", docs_url=None, redoc_url=None, openapi_url=None)
    add_api_routes(app, batcher, limits, bounds, model.name)
    page = build_page(batcher, limits, bounds, model.name)
    # The footer links only to Gradio's page of its own API (gradio_client calls /generate).
    return gr.mount_gradio_app(app, page, path="/", footer_links=["api"], show_error=True)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), opened before the model loads so
    that a taken port is reported at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OSError(f"--host/--port: cannot listen on {host}:{port} ({error.strerror or error})") from None
    sock.listen(128)
    return sock


def serve(app, sock: socket.socket, on_ready=None) -> None:
    """Serve `app` on `sock` until interrupted; `on_ready(url)` once it accepts connections."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(app, log_level=os.environ.get("TIUE_SERVE_LOG_LEVEL", "warning"), access_log=False,
                            timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    if on_ready is not None:
        original = server.startup

        async def startup(sockets=None):
            await original(sockets=sockets)
            on_ready(f"http://{f'[{host}]' if ':' in host else host}:{port}/")

        server.startup = startup
    server.run(sockets=[sock])
