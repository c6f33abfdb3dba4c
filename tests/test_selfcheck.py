"""The self-check of notebook 00: the shipped checkpoints load with the network blocked, and a failure is reported."""
import json
import socket
import shutil

import torch

from course import checkpoints, selfcheck


def test_shipped_checkpoints_verify_and_build_with_the_network_blocked():
    name, ok, detail = selfcheck.check_checkpoints()
    assert ok, detail
    assert f"{len(checkpoints.read_manifest())} sha256-verified" in detail and "digits UNet (" in detail


def test_a_corrupt_checkpoint_fails_the_check(tmp_path):
    for path in checkpoints.CHECKPOINT_DIR.glob("toy_*"):
        shutil.copy(path, tmp_path)
    manifest = {k: v for k, v in checkpoints.read_manifest().items() if k.startswith("toy_")}
    (tmp_path / checkpoints.MANIFEST).write_text(json.dumps(manifest))
    assert selfcheck.check_checkpoints(tmp_path, loaders={})[1]
    with open(tmp_path / "toy_two_moons.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    name, ok, detail = selfcheck.check_checkpoints(tmp_path, loaders={})
    assert not ok and "toy_two_moons" in detail and "corrupt" in detail


def test_an_empty_manifest_and_a_loader_that_opens_a_socket_fail_the_check(tmp_path):
    assert not selfcheck.check_checkpoints(tmp_path, loaders={})[1]

    def downloads():
        socket.create_connection(("huggingface.co", 443))
        return torch.nn.Linear(1, 1)

    before = socket.create_connection
    name, ok, detail = selfcheck.check_checkpoints(loaders={"downloads": downloads})
    assert not ok and "network access attempted" in detail
    assert socket.create_connection is before  # the block is lifted again after a failure
