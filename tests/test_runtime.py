"""The one owner of the thread count (ccflow.runtime.choose_threads) and of the device."""

import os

import pytest
import torch

from ccflow import runtime
from ccflow.runtime import RuntimeConfigError, choose_threads, resolve_device, set_threads


@pytest.fixture
def machine(monkeypatch):
    """4 usable cores, nothing else running, no thread variables set by the user."""
    for k in ("OMP_NUM_THREADS", "CCFLOW_THREADS", "LOCAL_WORLD_SIZE", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    load = [0.0]
    monkeypatch.setattr(os, "getloadavg", lambda: (load[0], 0.0, 0.0))
    return load


def test_a_small_model_gets_one_thread_a_large_one_the_free_cores(machine):
    assert choose_threads(params=100_000)[0] == 1
    assert choose_threads(params=50_000_000)[0] == 4
    machine[0] = 2.6  # others keep about 3 cores busy
    assert choose_threads(params=50_000_000)[0] == 1
    machine[0] = 1.2
    assert choose_threads(params=50_000_000)[0] == 3
    machine[0] = 9.0
    assert choose_threads(params=50_000_000)[0] == 1


def test_the_user_wins_in_order(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads(params=100) == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("CCFLOW_THREADS", "2")
    assert choose_threads(params=100) == (2, "CCFLOW_THREADS")
    assert choose_threads(4, params=100) == (4, "--threads")


def test_torchrun_divides_the_free_cores(machine, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert choose_threads(params=50_000_000)[0] == 2


@pytest.mark.parametrize("env,value,message", [("OMP_NUM_THREADS", "x", "not a whole number"),
                                               ("CCFLOW_THREADS", "0", "must be >= 1")])
def test_bad_thread_settings_are_refused(machine, monkeypatch, env, value, message):
    monkeypatch.setenv(env, value)
    with pytest.raises(RuntimeConfigError, match=message):
        choose_threads()
    with pytest.raises(RuntimeConfigError, match="--threads -1"):
        choose_threads(-1)


def test_set_threads_applies_the_choice(machine):
    assert set_threads(params=100) == 1 and torch.get_num_threads() == 1
    assert set_threads(2, params=100) == 2 and torch.get_num_threads() == 2


def test_devices():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RuntimeConfigError, match="is not a device"):
        resolve_device("foo")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeConfigError, match="no CUDA GPU"):
            resolve_device("cuda:0")
