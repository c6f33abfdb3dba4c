"""Device selection (the CPU unless a student asks for an accelerator) and torch's thread count on a shared machine.

torch starts one thread per core it sees, ignoring the process's CPU affinity and its cgroup quota (a JupyterHub
user limited to 2 CPUs on a 64-core node gets 64 threads). When other processes are busy on the same cores, its
threads wait on each other at every operation and a widget's new setting goes from about 1 s to tens of seconds.
``configure_threads`` (run when ``course`` is imported) picks the count from the CPUs this process may really use.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

THREADS_VARIABLE = "COURSE_NUM_THREADS"


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    usable: int  # CPUs this process may use: min(affinity, cgroup quota)
    affinity: int
    quota: float | None  # CPUs allowed by cgroup cpu.max (or cfs_quota_us), None when unlimited
    source: str  # why: the override variable, OMP_NUM_THREADS, or the rule

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup quota {self.quota:g} CPUs"
        return (f"torch threads: {self.threads} ({self.source}; {self.usable} usable CPUs: affinity {self.affinity}, "
                f"{quota}; {THREADS_VARIABLE}=n overrides)")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_quota(cgroup_root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup") -> float | None:
    """CPUs this process's cgroup may use, from cgroup v2 ``cpu.max`` ("200000 100000" -> 2.0) or v1
    ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, the smallest along the path to the root; None when unlimited."""
    root, quotas = Path(cgroup_root), []
    lines = (_read(Path(proc_cgroup)) or "").splitlines()
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        path = path.lstrip("/")
        if hierarchy == "0" and controllers == "":  # cgroup v2
            candidates = [(root, "cpu.max")]
        elif "cpu" in controllers.split(","):  # cgroup v1
            candidates = [(root / name, "v1") for name in ("cpu", "cpu,cpuacct", controllers)]
        else:
            continue
        for base, kind in candidates:
            parts = Path(path).parts if path else ()
            for depth in range(len(parts), -1, -1):
                folder = base.joinpath(*parts[:depth])
                if kind == "cpu.max":
                    text = _read(folder / "cpu.max")
                    if text and not text.startswith("max"):
                        quota, period = text.split()[:2]
                        quotas.append(int(quota) / int(period))
                else:
                    quota, period = _read(folder / "cpu.cfs_quota_us"), _read(folder / "cpu.cfs_period_us")
                    if quota and period and int(quota) > 0:
                        quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def usable_cpus(affinity: int | None = None, quota: float | None | str = "read") -> tuple[int, int, float | None]:
    """(usable, affinity, quota): the CPUs this process may really use, min(its CPU affinity, the cgroup quota
    rounded down, at least 1). ``affinity`` and ``quota`` are read from the system unless given."""
    if affinity is None:
        affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if quota == "read":
        quota = cgroup_cpu_quota()
    usable = affinity if quota is None else min(affinity, max(1, math.floor(quota)))
    return max(1, usable), affinity, quota


def choose_threads(environ=None, affinity: int | None = None, quota: float | None | str = "read") -> ThreadChoice:
    """torch's thread count: ``COURSE_NUM_THREADS`` if set; else ``OMP_NUM_THREADS`` if set (torch honours it);
    else one fewer than the usable CPUs, at least 1, so the Jupyter server, the browser and the kernel's drawing
    keep a core (on 2 cores under load, 2 threads made a guidance setting 4-21 s against 1.7 s with 1)."""
    environ = os.environ if environ is None else environ
    usable, affinity, quota = usable_cpus(affinity, quota)
    for name in (THREADS_VARIABLE, "OMP_NUM_THREADS"):
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"{name} must be a whole number of threads, at least 1, got {value!r}")
            return ThreadChoice(int(value), usable, affinity, quota, f"set by {name}")
    return ThreadChoice(max(1, usable - 1), usable, affinity, quota, "usable CPUs less one, at least 1")


CHOICE: ThreadChoice | None = None


def configure_threads(environ=None) -> ThreadChoice:
    """Apply ``choose_threads``: torch.set_num_threads when torch is already imported, and OMP_NUM_THREADS and
    MKL_NUM_THREADS (when unset) so a torch imported later, and the kernels and workers started from here, start
    with that count. Runs once when ``course`` is imported; call it again after changing the variable."""
    global CHOICE
    environ = os.environ if environ is None else environ
    choice = choose_threads(environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if choice.source != f"set by {name}":
            environ[name] = str(choice.threads)
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(choice.threads)
    CHOICE = choice
    return choice


def thread_report() -> str:
    """What ``configure_threads`` chose, with the torch threads in use now (the self-check prints it)."""
    import torch

    choice = CHOICE or choose_threads()
    now = torch.get_num_threads()
    text = choice.describe()
    return text if now == choice.threads else text + f"; but torch now runs {now} (set_num_threads was called since)"


def get_device(name: str | None = None):
    """Return the torch device to use.

    ``name`` is ``"cpu"``, ``"cuda"``, ``"mps"`` or ``"auto"``; when omitted, the
    ``COURSE_DEVICE`` environment variable decides, and it defaults to ``"cpu"``
    so every run gives the same numbers. ``"auto"`` picks cuda, then mps, then cpu.
    """
    import torch

    name = (name or os.environ.get("COURSE_DEVICE") or "cpu").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        return torch.device("cuda")
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ValueError("device 'mps' was asked for but this machine has no Apple GPU; use 'cpu' or 'auto'")
        return torch.device("mps")
    raise ValueError(f"device must be one of 'cpu', 'cuda', 'mps', 'auto', got {name!r}")
