"""Method options (`--set`) are checked when the Config is made: each bad value of issue #17 is an
AdrtError naming the option and what was expected, before any data is read or anything written
(before: tracebacks in fitting, silently recorded values, parity failures at export)."""
from __future__ import annotations

import os
import shutil
import time

import pytest
from click.testing import CliRunner

from adrt.errors import AdrtError

pytest.importorskip("torch")

CASES = [
    ("patchcore", "coreset_ratio", "nan", "coreset_ratio=nan: expected a finite number in (0.0, 1.0]"),
    ("patchcore", "coreset_ratio", "-1", "coreset_ratio=-1.0: expected a finite number in (0.0, 1.0]"),
    ("patchcore", "coreset_ratio", "2", "coreset_ratio=2.0: expected a finite number in (0.0, 1.0]"),
    ("patchcore", "num_neighbors", "0", "num_neighbors=0: expected an integer >= 1"),
    ("patchcore", "num_neighbors", "-3", "num_neighbors=-3: expected an integer >= 1"),
    ("patchcore", "bank_chunk", "0", "bank_chunk=0: expected an integer >= 1"),
    ("patchcore", "grid_stride", "0", "grid_stride=0: expected an integer in [1, 64]"),
    ("patchcore", "patch_size", "0", "patch_size=0: expected an integer in [1, 63]"),
    ("patchcore", "embed_dim", "100000", "embed_dim=100000: the lite0 taps at strides 8, 16 have 152 dims; "
                                         "expected 0 (all) to 152"),
    ("patchcore", "sigma", "-1", "sigma=-1.0: expected a finite number >= 0.0"),
    ("patchcore", "sigma", "inf", "sigma=inf: expected a finite number >= 0.0"),
    ("patchcore", "tap_strides", "8,3", "no block of lite0 has stride 3"),
    ("patchcore", "backbone", "resnet", "unknown EfficientNet-Lite variant 'resnet'"),
    ("padim", "n_features", "1000", "n_features=1000: the lite0 taps at strides 4, 8, 16 have 176 dims"),
    ("padim", "eps", "nan", "eps=nan: expected a finite number >= 0.0"),
    ("padim", "grid_stride", "2.5", "option grid_stride='2.5': expected a value like 8"),
    ("memae", "sigma", "inf", "memae option sigma=inf: expected a finite number >= 0.0"),
    ("memae", "lr", "nan", "memae option lr=nan: expected a finite number > 0.0"),
    ("vae", "lam", "-0.5", "vae option lam=-0.5: expected a finite number >= 0"),
    ("inpaint", "sigma", "-2", "inpaint option sigma=-2.0: expected a finite number >= 0.0"),
    ("inpaint", "lr", "inf", "inpaint option lr=inf: expected a finite number > 0.0"),
    ("students", "teacher_lr", "nan", "students option teacher_lr=nan: expected a finite number > 0.0"),
    ("students", "val_fraction", "1", "students option val_fraction=1.0: expected a finite number in [0.0, 1.0)"),
    ("students", "pos_shift", "-1", "students option pos_shift=-1: expected an integer >= 0"),
    ("efficientad", "lr", "nan", "efficientad option lr=nan: expected a finite number > 0.0"),
    ("efficientad", "penalty_images", "0", "efficientad option penalty_images=0: expected an integer >= 1"),
    ("efficientad", "width", "inf", "efficientad option width=inf: expected a finite number > 0.0"),
]


@pytest.mark.parametrize("method, key, value, match", CASES, ids=[f"{c[0]}-{c[1]}={c[2]}" for c in CASES])
def test_bad_option_values_are_refused_when_the_config_is_made(method, key, value, match):
    from adrt.train.fit import make_config

    with pytest.raises(AdrtError) as e:
        make_config(method, {key: value})
    assert match in str(e.value)


@pytest.mark.parametrize("method, key, value, match", CASES[:4] + CASES[8:10])
def test_the_cli_refuses_them_in_one_line_before_reading_data(method, key, value, match, tmp_path):
    from adrt.cli import main

    t0 = time.perf_counter()
    r = CliRunner().invoke(main, ["train", method, "--data", str(tmp_path / "missing"), "--out",
                                  str(tmp_path / "r"), "--set", f"{key}={value}"])
    assert r.exit_code == 1 and match in r.output and "Traceback" not in r.output, r.output
    assert r.output.count("\n") == 1 and time.perf_counter() - t0 < 20
    assert not (tmp_path / "r").exists()


def test_python_values_are_checked_too():
    from adrt.train.fit import make_config
    from adrt.train.patchcore import PatchCoreConfig

    with pytest.raises(AdrtError, match="num_neighbors=2.5: expected an integer"):
        make_config("patchcore", {"num_neighbors": 2.5})
    with pytest.raises(AdrtError, match="bank_chunk=True: expected an integer"):
        PatchCoreConfig(bank_chunk=True)
    assert make_config("patchcore", {"embed_dim": "152", "coreset_ratio": "1"}).embed_dim == 152


@pytest.mark.parametrize("value, expect", [("true", True), ("0", False), ("Yes", True), ("off", False)])
def test_boolean_options_accept_clear_words_only(value, expect):
    from adrt.train.fit import _coerce

    assert _coerce("flag", value, False) is expect
    with pytest.raises(AdrtError, match=r"option flag='abc': expected a value like False"):
        _coerce("flag", "abc", False)                  # before: silently False


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_training_skips_a_fifo_among_the_images_with_a_notice(synth_data, tmp_path, capsys):
    from adrt.data import Dataset

    data = tmp_path / "d"
    shutil.copytree(synth_data, data)
    os.mkfifo(data / "train" / "good" / "zz_pipe.png")
    (data / "train" / "good" / "sub.png").mkdir()
    ds = Dataset.open(data)                            # before: hung reading the FIFO (infer) or crashed
    assert len(ds.train) == len(Dataset.open(synth_data).train)
    err = capsys.readouterr().err
    assert "skipped" in err and "zz_pipe.png: a FIFO (named pipe)" in err and "sub.png: a folder" in err
