"""The machine a command runs on: which device, and how many CPU threads.

:func:`choose_threads` is the one place that decides the thread count of
PyTorch's intra-op pool (training, evaluation) and of numpy's BLAS (the golden
model's matrix products). PyTorch's threads spin while they wait for each
other; when another process holds a core they spin instead of working, and a
tiny model on 2 cores next to one busy process ran 2.8x slower with 2 threads
than with 1. So:

1. ``--threads N`` (the ``threads`` argument) wins;
2. else ``CCFLOW_THREADS``, then ``OMP_NUM_THREADS`` set by the user;
3. else a model under :data:`SMALL_MODEL` parameters gets 1 thread (alone on an
   idle machine the tiny preset is 5% faster on 2 threads, 14.3 s against 15.0 s
   an epoch, but next to anything else 2 threads collapse, 279 s against 16 s,
   and the load average is a minute too late to see a job started beside it),
   and a larger one the cores that are free: the CPUs this process may run on
   (``os.sched_getaffinity``) minus the 1-minute load average of the others,
   divided among the processes of a ``torchrun`` group on this host.
"""

from __future__ import annotations

import os

SMALL_MODEL = 1_000_000  # parameters; below this one thread is always safe and at most ~5% slower
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class RuntimeConfigError(ValueError):
    """A device or thread setting that cannot work here; the message names the option and the fix."""


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def free_cores() -> int:
    """Cores not taken by other processes, from the 1-minute load average (at least 1)."""
    cores = usable_cores()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cores, round(cores - busy)))


def _env_threads(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        raise RuntimeConfigError(f"{name}={raw!r} is not a whole number; set it to a thread count >= 1 "
                                 "or unset it") from None
    if n < 1:
        raise RuntimeConfigError(f"{name}={n} must be >= 1; set it to a thread count or unset it")
    return n


def choose_threads(threads: int | None = None, params: int | None = None) -> tuple[int, str]:
    """(thread count, why) for a model of ``params`` parameters (None: unknown, treated as large)."""
    if threads is not None:
        if threads < 1:
            raise RuntimeConfigError(f"--threads {threads} must be >= 1 (or leave it out to choose by model "
                                     "size and free cores)")
        return threads, "--threads"
    for name in ("CCFLOW_THREADS", "OMP_NUM_THREADS"):
        n = _env_threads(name)
        if n is not None:
            return n, name
    if params is not None and params < SMALL_MODEL:
        return 1, f"model of {params / 1e6:.2f} M parameters"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")) or 1)
    return max(1, free_cores() // max(local, 1)), "free cores"


def set_threads(threads: int | None = None, params: int | None = None) -> int:
    """Apply :func:`choose_threads` to PyTorch and to numpy's BLAS (where it can still be set); return the count."""
    import torch

    n, _why = choose_threads(threads, params)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    _set_blas_threads(n)
    return n


def _set_blas_threads(n: int) -> None:
    """numpy's OpenBLAS reads its thread count at load; set it through its C entry point when loaded."""
    import ctypes
    import sys

    np = sys.modules.get("numpy")
    if np is None:
        for name in THREAD_VARS[1:]:
            os.environ.setdefault(name, str(n))
        return
    libs = os.path.join(os.path.dirname(os.path.dirname(np.__file__)), "numpy.libs")  # the wheel's own OpenBLAS
    try:
        names = [f for f in os.listdir(libs) if "openblas" in f and ".so" in f]
    except OSError:
        return
    for f in names:
        try:
            lib = ctypes.CDLL(os.path.join(libs, f))
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return


def resolve_device(device: str | None = None):
    """A torch.device from ``--device`` (default: cuda when present), refused with the fix when unusable."""
    import torch

    if device is None or device == "":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise RuntimeConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if d.type == "cpu":
        return d
    if d.type != "cuda":
        raise RuntimeConfigError(f"--device {device!r}: ccflow runs on cpu or cuda; use --device cpu or cuda")
    if not torch.cuda.is_available():
        raise RuntimeConfigError(f"--device {device}: no CUDA GPU is visible here; use --device cpu "
                                 "(or leave --device out)")
    if d.index is not None and d.index >= torch.cuda.device_count():
        raise RuntimeConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                                 f"cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return d
