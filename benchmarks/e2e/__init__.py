"""The end-to-end benchmark suite's parts: models per scale, the row implementations, FLOP
counting and the matmul rate, timing, and the JSON / Markdown / PNG report.

`benchmarks/test_end_to_end.py` is the pytest front end; nothing here imports pytest.
"""
