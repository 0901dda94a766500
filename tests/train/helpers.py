"""Shared by the method tests under tests/train: the one-thread fixture and small data helpers."""
from __future__ import annotations

import os
import signal

import pytest

torch = pytest.importorskip("torch")

from tests.conftest import SIZE  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread for a test module (import it there). Tiny networks gain nothing from
    threads, and on a shared 2-core machine two intra-op threads spend their time waiting for each
    other (measured 4–10× slower); one thread keeps these tests quick."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def quiet(*a, **k):
    pass


def synth_images(synth_data, n=None):
    """The synthetic dataset's training images (the first ``n``), uint8 N×SIZE×SIZE×3."""
    from adrt.data import Dataset, load_images

    paths = Dataset.open(synth_data).train
    return load_images(paths[:n] if n else paths, SIZE, SIZE)


def preprocess(x):
    """uint8 NHWC → the detectors' normalised NCHW float input."""
    return (x.permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def score_test_split(det, synth_data):
    """``det``'s four outputs (amap, score, raw_map, raw_score) on the synthetic test split, with the
    split's labels and masks."""
    import numpy as np

    from adrt.data import Dataset, load_images, load_masks

    ds = Dataset.open(synth_data)
    x = torch.from_numpy(load_images([s.path for s in ds.test], SIZE, SIZE))
    with torch.inference_mode():
        out = det(x)
    return out, np.array([s.label for s in ds.test]), load_masks(ds.test, SIZE, SIZE)


def interrupting_log(at: str, times: int):
    """A log callback that sends SIGINT (Ctrl-C) ``times`` times when a line containing ``at`` appears."""
    sent = []

    def log(msg="", end="\n"):
        if at in msg and len(sent) < times and end != "\r":
            sent.append(msg)
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
    log.sent = sent
    return log
