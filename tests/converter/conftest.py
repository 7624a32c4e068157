"""A real digits model trained during the test session, and its image folders."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import DEMO


@dataclass(frozen=True)
class DigitsWorkspace:
    root: Path
    train: Path
    test: Path
    model: Path
    labels: Path


def demo_script(name: str) -> ModuleType:
    """A training script from demo/ (not a package) loaded as a module: its data and model helpers."""
    spec = importlib.util.spec_from_file_location(name, DEMO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsWorkspace:
    train_digits = demo_script("train_digits")
    root = tmp_path_factory.mktemp("digits")
    train, test = train_digits.write_digit_folders(root)
    model = train_digits.train_model(train, root / "digits.keras", epochs=30)
    labels = root / "labels.txt"
    labels.write_text("\n".join(str(d) for d in range(10)) + "\n")
    return DigitsWorkspace(root, train, test, model, labels)
