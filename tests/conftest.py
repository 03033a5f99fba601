"""Fixtures shared by the test files."""

import sysconfig
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run fastest on one thread, and a busy machine cannot stall them in OpenMP barriers."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Each test tokenizes into its own cache: no test sees another's files."""
    monkeypatch.setenv("CCFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def text_corpus(tmp_path) -> str:
    """40 kB of Python source as a plain-text corpus (90/5/5 split): quick epochs and evaluations."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
    path = tmp_path / "text.txt"
    path.write_text(src.read_text()[:40_000])
    return str(path)
