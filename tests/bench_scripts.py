"""The scripts in bench/ are not a package: their tests load one by path, as `python bench/NAME.py` runs it."""

import importlib.util
from pathlib import Path


def load(name: str):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
