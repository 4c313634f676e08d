"""Serve a model to browsers and programs: a web page (Gradio) and an HTTP API on one port,
loopback only unless --host says otherwise. Requests that arrive within --max-wait-ms of each
other are sampled in one pass of up to --max-batch-size images; image i of a request is seeded
with seed + i, as `tiue sample` seeds its prompts. Needs `pip install "tiue[serve]"`.

    tiue serve                                   # the embedded model on http://127.0.0.1:7860/
    curl -s http://127.0.0.1:7860/api/generate.png -d '{"prompt": "a red circle", "seed": 3}' -o circle.png
"""

from __future__ import annotations

import argparse
import math
import sys

from tiue.devices import DTYPE_NAMES

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="hub id, local pipeline folder or embedded model name "
                        "(default: the embedded default model)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    parser.add_argument("--max-batch-size", type=int, default=8, help="most images in one pass (default 8)")
    parser.add_argument("--max-wait-ms", type=float, default=20.0,
                        help="how long the oldest waiting image waits for others to share its pass (default 20)")
    parser.add_argument("--max-images", type=int, default=16, help="most images per request (default 16)")
    parser.add_argument("--max-prompt-chars", type=int, default=1000, help="longest prompt accepted (default 1000)")
    parser.add_argument("--max-steps", type=int, default=16, help="largest K a request may ask for (default 16)")
    parser.add_argument("--max-pixels", type=int, default=16 * 512 * 512,
                        help="most pixels per request, all its images together (default 16 * 512 * 512)")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance for every request; 1 (default) is none, what distilled "
                        "students are trained for; above 1, requests may carry a negative_prompt")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--fast", action="store_true",
                        help="compiled fast path (each new batch size compiles once: slow first passes)")


def _check_flags(args: argparse.Namespace) -> None:
    for flag, value, low in (("--max-batch-size", args.max_batch_size, 1), ("--max-images", args.max_images, 1),
                             ("--max-prompt-chars", args.max_prompt_chars, 1), ("--max-steps", args.max_steps, 1),
                             ("--max-pixels", args.max_pixels, 1), ("--port", args.port, 0)):
        if value < low:
            raise ValueError(f"{flag}: expected an integer >= {low}, got {value}")
    if args.port > 65535:
        raise ValueError(f"--port: expected 0..65535, got {args.port}")
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise ValueError(f"--guidance-scale: expected a finite number >= 0 (1 = no guidance), got {args.guidance_scale}")
    if not 0 <= args.max_wait_ms <= 10_000:
        raise ValueError(f"--max-wait-ms: expected 0 <= ms <= 10000, got {args.max_wait_ms}")


def run(args: argparse.Namespace) -> None:
    from tiue.cli.sample import check_device_flags
    from tiue.embedded import model_or_default

    _check_flags(args)
    try:
        import fastapi  # noqa: F401
        import gradio  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ValueError(f"tiue serve needs gradio ({error.name} is missing): pip install \"tiue[serve]\"") from None
    check_device_flags(args.device, args.dtype)
    model = model_or_default(args.model)

    from tiue.serve.batcher import Batcher
    from tiue.serve.model import ServedModel
    from tiue.serve.requests import Limits
    from tiue.serve.server import bind, build_app, serve

    sock = bind(args.host, args.port)  # a taken port fails before the model loads
    limits = Limits(max_prompt_chars=args.max_prompt_chars, max_images=args.max_images,
                    max_pixels=args.max_pixels, max_steps=args.max_steps)
    served = ServedModel.load(model, args.device, args.dtype, args.fast, args.guidance_scale)
    batcher = Batcher(served.sample, args.max_batch_size, args.max_wait_ms / 1000)
    app = build_app(served, batcher, limits)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"tiue serve: warning: listening on {args.host}: reachable from other machines", file=sys.stderr)
    try:
        serve(app, sock, on_ready=lambda url: print(f"tiue serve: {model} on {url}", flush=True))
    finally:
        batcher.close()
