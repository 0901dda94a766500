"""Serving adrt bundles with NVIDIA Triton Inference Server (torch-free).

``adrt.triton.repository`` writes and checks model repositories (``adrt triton``),
``adrt.triton.config`` builds and checks model configurations, ``adrt.triton.python_model`` is
the Python-backend model, and ``adrt.triton.server`` starts a local tritonserver (tests, benchmarks).
Nothing is imported here, so ``import adrt.triton.python_model`` inside Triton's stub stays small.
"""
