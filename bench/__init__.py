"""Benchmarks: what the service costs, measured against onnxruntime alone and a typical Keras deployment.

`python -m bench` (see bench/README.md). Not part of the test suite and not shipped in the image.
"""
