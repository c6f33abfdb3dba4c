"""The environment self-check of notebook 00: versions, device, data, and no network needed."""
from __future__ import annotations

import contextlib
import platform
import socket
import time
from importlib import metadata

from . import datasets
from .device import get_device

EXPECTED_TORCH = "2.13.0"


class NetworkBlocked(RuntimeError):
    pass


@contextlib.contextmanager
def network_blocked():
    """Inside this block any attempt to open a network connection raises NetworkBlocked."""
    def refuse(*args, **kwargs):
        raise NetworkBlocked(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo = saved


def versions() -> dict:
    names = ["torch", "diffusers", "numpy", "scipy", "matplotlib", "ipywidgets", "scikit-learn", "nbval"]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "MISSING"
    return found


def run() -> list[tuple[str, bool, str]]:
    """Run every check; print a table and return (check, ok, detail) rows."""
    import torch

    rows = []
    found = versions()
    torch_version = torch.__version__.split("+")[0]
    rows.append(("torch pinned", torch_version == EXPECTED_TORCH, f"{torch.__version__} (expected {EXPECTED_TORCH})"))
    missing = [k for k, v in found.items() if v == "MISSING"]
    rows.append(("packages installed", not missing, ", ".join(f"{k} {v}" for k, v in found.items())))
    rows.append(("device", True, f"{get_device()} (torch threads: {torch.get_num_threads()}, "
                                 f"cuda available: {torch.cuda.is_available()})"))
    start = time.perf_counter()
    try:
        with network_blocked():
            x, _ = datasets.digits()
            shapes = datasets.shapes(n=64)
            toy, _ = datasets.swiss_roll()
        rows.append(("data offline", True, f"digits {tuple(x.shape)}, shapes {tuple(shapes.images.shape)}, "
                                           f"swiss roll {tuple(toy.shape)} in {time.perf_counter() - start:.1f} s "
                                           f"with the network blocked"))
    except NetworkBlocked as err:
        rows.append(("data offline", False, str(err)))
    width = max(len(r[0]) for r in rows)
    for name, ok, detail in rows:
        print(f"{'✔' if ok else '✘'} {name:<{width}}  {detail}")
    return rows
