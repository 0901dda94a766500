"""Feeds for the fused graphs' uint8 inputs in export-time checks (torch-free).

A graph that compares images with references (inputs ``image`` and ``reference``) is checked, at
export, against its opset-17 copy, its reduced-precision variants and TensorRT plans on sample
images: as references they get the same images in another order (the last one first), so the
comparison sees real differences rather than an image against itself.
"""
from __future__ import annotations

import numpy as np

from adrt.contract import INPUT_NAME


def sample_feeds(input_names, images: np.ndarray, references: np.ndarray | None = None) -> dict:
    """Feeds for a graph's uint8 inputs: ``images``, and as ``reference`` (when the graph has one)
    ``references`` or, by default, the same images in another order (the last one first)."""
    feeds = {INPUT_NAME: images}
    for name in input_names:
        if name != INPUT_NAME:
            feeds[name] = np.ascontiguousarray(np.roll(images, 1, axis=0) if references is None else references)
    return feeds


def graph_inputs(model) -> list[str]:
    """The names of an ONNX model's graph inputs that are not initializers."""
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]
