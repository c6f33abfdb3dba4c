"""The environment self-check of notebook 00: versions, device, data and checkpoints, and no network needed."""
from __future__ import annotations

import contextlib
import platform
import socket
import time
from importlib import metadata

from . import checkpoints, datasets, models
from .device import get_device, thread_report

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


def default_loaders() -> dict:
    """The loaders the notebooks call first: each builds its model (diffusers' UNet among them) from a checkpoint."""
    return {"digits UNet": models.load_digits_unet, "digit classifier": models.load_classifier,
            "swiss-roll model": lambda: models.load_toy("swiss_roll")}


def check_checkpoints(directory=checkpoints.CHECKPOINT_DIR, loaders: dict | None = None) -> tuple[str, bool, str]:
    """With the network blocked: verify the sha256 of every checkpoint in the manifest, then build the models
    of ``loaders`` (name -> function returning a module). Returns one (check, ok, detail) row."""
    loaders = default_loaders() if loaders is None else loaders
    start = time.perf_counter()
    try:
        with network_blocked():
            manifest = checkpoints.read_manifest(directory)
            if not manifest:
                return ("checkpoints offline", False, f"no checkpoints recorded in {directory}: run `make checkpoints`")
            for name in manifest:
                checkpoints.load_state(name, directory)
            sizes = {name: sum(p.numel() for p in load().parameters()) for name, load in loaders.items()}
    except (NetworkBlocked, checkpoints.CheckpointError) as err:
        return ("checkpoints offline", False, str(err))
    built = ", ".join(f"{name} ({n:,} parameters)" for name, n in sizes.items())
    return ("checkpoints offline", True, f"{len(manifest)} sha256-verified; built {built}; "
                                         f"{time.perf_counter() - start:.1f} s with the network blocked")


def run() -> list[tuple[str, bool, str]]:
    """Run every check; print a table and return (check, ok, detail) rows."""
    import torch

    rows = []
    found = versions()
    torch_version = torch.__version__.split("+")[0]
    rows.append(("torch pinned", torch_version == EXPECTED_TORCH, f"{torch.__version__} (expected {EXPECTED_TORCH})"))
    missing = [k for k, v in found.items() if v == "MISSING"]
    rows.append(("packages installed", not missing, ", ".join(f"{k} {v}" for k, v in found.items())))
    rows.append(("device", True, f"{get_device()} ({thread_report()}; cuda available: {torch.cuda.is_available()})"))
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
    rows.append(check_checkpoints())
    width = max(len(r[0]) for r in rows)
    for name, ok, detail in rows:
        print(f"{'✔' if ok else '✘'} {name:<{width}}  {detail}")
    return rows
