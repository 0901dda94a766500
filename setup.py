"""Package discovery for the `adrt` import package, which is spread over four top-level folders (see
pyproject.toml's package-dir): every folder with an __init__.py below them is a package, found here, so
adding a method (train/<name>/) or a module folder needs no edit to a hand-kept list."""
from setuptools import find_packages, setup

ROOTS = {"adrt": "adrt", "adrt.train": "train", "adrt.export": "export", "adrt.runtime": "runtime"}

setup(packages=sorted(name + suffix for name, folder in ROOTS.items()
                      for suffix in ["", *(f".{sub}" for sub in find_packages(folder))]))
