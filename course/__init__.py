"""Reference implementations, datasets, models, plots and widgets for the diffusion workbook.

Every notebook imports what it needs from here; nothing in the package touches the network.
"""
import os

# The workbook never downloads: make the Hugging Face libraries fail fast instead of trying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .device import configure_threads

# torch's thread count from the CPUs this process may use (affinity, cgroup quota); COURSE_NUM_THREADS overrides.
configure_threads()

__version__ = "0.1.0"
