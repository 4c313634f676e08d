"""The web page of `tiue serve`: a Gradio form whose requests go through the same checks and
the same batcher as the HTTP API (so page users share passes with each other and with API calls)."""

from __future__ import annotations

import time

from tiue.serve.batcher import Batcher
from tiue.serve.requests import Limits, ModelBounds, RequestError, parse_request

__all__ = ["build_page"]


def _field(value):
    """Gradio numbers arrive as floats (or None when the box is empty); whole ones become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def build_page(batcher: Batcher, limits: Limits, bounds: ModelBounds, model_name: str):
    import gradio as gr

    def generate(prompt, negative_prompt, seed, count, steps):
        start = time.perf_counter()
        payload = {"prompt": prompt, "negative_prompt": negative_prompt or None, "seed": _field(seed),
                   "count": _field(count), "steps": _field(steps)}
        try:
            request = parse_request({k: v for k, v in payload.items() if v is not None}, limits, bounds)
        except RequestError as error:
            return [], f"Error: {error}"
        pending = batcher.submit(request)
        try:
            images = pending.future.result()
        except Exception as error:  # a failed pass: say so on the page, keep serving
            return [], f"Error: sampling failed: {str(error).splitlines()[0] if str(error) else type(error).__name__}"
        seconds = time.perf_counter() - start
        plural = "s" if request.count > 1 else ""
        sizes = ", ".join(map(str, pending.batch_sizes))
        status = (f"{request.count} image{plural} (seed {request.seeds[0]}"
                  f"{f'..{request.seeds[-1]}' if request.count > 1 else ''}, K = {request.steps}) in {seconds:.2f} s; "
                  f"pass size {sizes}")
        return [(image, f"seed {s}") for image, s in zip(images, request.seeds)], status

    with gr.Blocks(title=f"tiue: {model_name}", analytics_enabled=False) as page:
        gr.Markdown(f"# tiue serve: `{model_name}`\nOne-pass text-to-image sampling. Image i is seeded with "
                    "seed + i, as `tiue sample` seeds its prompts.")
        with gr.Row():
            with gr.Column():
                prompt = gr.Textbox(label="Prompt", placeholder="a red circle", elem_id="prompt")
                # Only where the model samples with guidance (tiue serve --guidance-scale above 1).
                negative_prompt = gr.Textbox(label="Negative prompt", value="", visible=bounds.guided,
                                             elem_id="negative-prompt")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
                count = gr.Slider(label="Images", minimum=1, maximum=limits.max_images, step=1, value=1,
                                  elem_id="count")
                steps = gr.Slider(label="Steps (K)", minimum=1, maximum=limits.max_steps, step=1,
                                  value=bounds.default_steps, elem_id="steps")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                gallery = gr.Gallery(label="Images", format="png", columns=4, preview=False, object_fit="contain",
                                     elem_id="images")
                status = gr.Markdown(elem_id="status")
        # No concurrency limit: the page's requests must reach the batcher together to share passes.
        button.click(generate, [prompt, negative_prompt, seed, count, steps], [gallery, status], api_name="generate",
                     concurrency_limit=None)
    return page
