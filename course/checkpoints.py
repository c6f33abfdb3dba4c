"""Shipped checkpoints: safetensors files in data/checkpoints/, each recorded in manifest.json with its sha256."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"
MANIFEST = "manifest.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not match its manifest entry."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(directory: Path = CHECKPOINT_DIR) -> dict:
    path = Path(directory) / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def save_checkpoint(model: torch.nn.Module, name: str, record: dict, directory: Path = CHECKPOINT_DIR) -> dict:
    """Save the model's weights as NAME.safetensors and record it (with size and sha256) in the manifest."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.safetensors"
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={"recipe": name})
    entry = dict(record, file=path.name, size_bytes=path.stat().st_size, sha256=sha256(path))
    manifest = read_manifest(directory)
    manifest[name] = entry
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return entry


def load_state(name: str, directory: Path = CHECKPOINT_DIR) -> tuple[dict, dict]:
    """The verified state dict and manifest entry of checkpoint NAME, or a CheckpointError that says how to rebuild it."""
    directory = Path(directory)
    rebuild = f"rebuild it with: python -m course.train {name}   (or `make checkpoints` for all)"
    entry = read_manifest(directory).get(name)
    path = directory / f"{name}.safetensors"
    if entry is None:
        raise CheckpointError(f"no manifest entry for checkpoint '{name}' in {directory / MANIFEST}; {rebuild}")
    if not path.exists():
        raise CheckpointError(f"checkpoint file {path} is missing; {rebuild}")
    found = sha256(path)
    if found != entry["sha256"]:
        raise CheckpointError(f"checkpoint file {path} is corrupt or was changed: its sha256 is {found[:12]}…, "
                              f"the manifest records {entry['sha256'][:12]}…; {rebuild}")
    return load_file(str(path)), entry


def load_model(name: str, build: Callable[[dict], torch.nn.Module], directory: Path | None = None,
               frozen: bool = False) -> torch.nn.Module:
    """Checkpoint NAME, sha256-verified, into the model ``build(config from its manifest entry)``, in eval mode."""
    state, entry = load_state(name, directory or CHECKPOINT_DIR)
    model = build(dict(entry["config"] or {}))
    model.load_state_dict(state)
    model.eval()
    return model.requires_grad_(False) if frozen else model


def manifest_entry(name: str, directory: Path | None = None) -> dict:
    """The manifest entry of checkpoint NAME (recipe, steps, quality figures, sha256), or a CheckpointError."""
    entry = read_manifest(directory or CHECKPOINT_DIR).get(name)
    if entry is None:
        raise CheckpointError(f"no manifest entry for '{name}'; rebuild it with: python -m course.train {name}")
    return entry
