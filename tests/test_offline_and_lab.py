"""Nothing touches the network, and `make lab` serves JupyterLab headless."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


BLOCK_SOCKETS = """
import socket
def _refuse(*args, **kwargs):
    raise OSError("network blocked by the offline test")
socket.socket.connect = socket.socket.connect_ex = _refuse
socket.create_connection = socket.getaddrinfo = _refuse
"""


def test_importing_course_needs_no_network():
    code = BLOCK_SOCKETS + """
import course, course.datasets, course.forward, course.grading, course.widgets, course.exercises
course.datasets.digits(); course.datasets.shapes(n=8)
import urllib.request
try:
    urllib.request.urlopen("http://example.com", timeout=2)
except OSError as err:
    assert "network blocked" in str(err) or "network blocked" in str(err.__cause__ or err.reason), err
else:
    raise SystemExit("the socket block did not hold")
print("offline ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "offline ok" in result.stdout


# Notebooks with the network blocked: tests/test_site.py builds the site from 00 and 06 with every Python process
# of the build (the builder and its kernels) refusing connections off the machine.


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_make_lab_serves_the_notebooks_headless(root):
    port, token = _free_port(), "workbook-test"
    env = dict(os.environ, NO_BROWSER="1", PORT=str(port), LAB_TOKEN=token, JUPYTER_PLATFORM_DIRS="1")
    proc = subprocess.Popen(["make", "lab"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        listing, deadline = None, time.time() + 120
        while time.time() < deadline and listing is None:
            try:
                url = f"http://127.0.0.1:{port}/api/contents/notebooks?token={token}"
                with urllib.request.urlopen(url, timeout=5) as response:
                    listing = response.read().decode()
            except OSError:
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(1)
        assert listing is not None, "JupyterLab did not answer within 120 s"
        assert "00_start_here.ipynb" in listing and "02_forward_reverse.ipynb" in listing
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/lab" in out  # the URL is printed for a headless machine
