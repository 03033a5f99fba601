"""Fixtures shared by the test files."""

import re
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


# Building blocks sized per instance (their parameters are set where they are used).
GENERIC_MODULES = {"ccflow_rom", "ccflow_ram", "ccflow_lut", "ccflow_mul", "ccflow_pipe_reg", "ccflow_tile_rom",
                   "ccflow_delay", "ccflow_cnn_map_ram"}


@pytest.fixture
def rtl_sizes():
    """A function: rendered rtl folder -> {size name: the values it has in the design-sized modules}.

    It asserts on the way that no module has a `define or an `include: sizes are parameters."""
    def sizes(out: Path) -> dict[str, set[int]]:
        found: dict[str, set[int]] = {}
        for p in out.glob("*.v"):
            code = re.sub(r"//.*", "", p.read_text())
            assert not re.search(r"`(define|include)\b", code), p.name
            if p.stem in GENERIC_MODULES:
                continue
            for name, value in re.findall(r"\b(?:parameter|localparam)\s+integer\s+(\w+)\s*=\s*(\d+)\s*[,;)\n]", code):
                found.setdefault(name, set()).add(int(value))
        return found
    return sizes


@pytest.fixture
def text_corpus(tmp_path) -> str:
    """40 kB of Python source as a plain-text corpus (90/5/5 split): quick epochs and evaluations."""
    src = Path(sysconfig.get_paths()["stdlib"]) / "argparse.py"
    path = tmp_path / "text.txt"
    path.write_text(src.read_text()[:40_000])
    return str(path)


@pytest.fixture(scope="session")
def static_bodies():
    """A function: rendered rtl folder (and its module prefix) -> {module: its text with comments,
    whitespace, the prefix and the defaults of its integer parameters and localparams taken out}.
    When the RTL is static (generate data, not code) that is the same for every design."""
    def bodies(out: Path, prefix: str = "") -> dict[str, str]:
        found = {}
        for p in out.glob("*.v"):
            code = re.sub(r"//.*", "", p.read_text())
            code = re.sub(r"\b((?:parameter|localparam)\s+integer\s+\w+\s*=)[^,;\n]*", r"\1 _", code)
            if prefix:
                code = re.sub(rf"\b{prefix}", "", code)
            found[p.stem.removeprefix(prefix)] = " ".join(code.split())
        return found
    return bodies
