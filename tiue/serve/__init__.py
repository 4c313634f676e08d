"""`tiue serve`: a web page and an HTTP API over one loaded model, batching concurrent requests
into shared passes. Modules: requests (what a client may ask, checked), batcher (the passes),
model (the pipeline call), api (HTTP routes), page (the Gradio page), server (one process)."""
