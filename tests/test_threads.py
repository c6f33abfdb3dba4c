"""torch's thread count: from the CPU affinity and the cgroup quota, overridable, applied at import, self-checked."""
import os
import subprocess
import sys

import pytest

from course import device


def cgroup_v2(tmp_path, cpu_max_by_level):
    """A fake cgroup v2 tree /user/session with cpu.max files; returns (root, proc_cgroup file)."""
    root = tmp_path / "cgroup"
    folder = root
    for level, text in zip(["", "user", "session"], cpu_max_by_level):
        folder = folder / level if level else folder
        folder.mkdir(parents=True, exist_ok=True)
        if text is not None:
            (folder / "cpu.max").write_text(text + "\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/user/session\n")
    return root, proc


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path):
    root, proc = cgroup_v2(tmp_path, [None, "400000 100000", "150000 100000"])
    assert device.cgroup_cpu_quota(root, proc) == 1.5
    root, proc = cgroup_v2(tmp_path / "b", [None, "200000 100000", "max 100000"])
    assert device.cgroup_cpu_quota(root, proc) == 2.0
    root, proc = cgroup_v2(tmp_path / "c", [None, "max 100000", "max 100000"])
    assert device.cgroup_cpu_quota(root, proc) is None


def test_cgroup_v1_quota_and_unlimited(tmp_path):
    root = tmp_path / "cgroup"
    folder = root / "cpu" / "hub" / "alice"
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("100000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("4:memory:/hub/alice\n1:cpu,cpuacct:/hub/alice\n0::/\n")
    assert device.cgroup_cpu_quota(root, proc) == 1.0
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert device.cgroup_cpu_quota(root, proc) is None
    assert device.cgroup_cpu_quota(tmp_path / "missing", tmp_path / "missing_proc") is None


@pytest.mark.parametrize("affinity, quota, usable, threads", [
    (2, None, 2, 1),    # this machine: two cores shared, one left for the server and the browser
    (64, 2.0, 2, 1),    # a JupyterHub user limited to 2 CPUs on a 64-core node: not 64 threads
    (64, 1.5, 1, 1),    # a fractional quota rounds down
    (64, 0.5, 1, 1),    # never fewer than one thread
    (8, None, 8, 7),
    (1, None, 1, 1),
    (4, 16.0, 4, 3),    # the affinity is smaller than the quota
])
def test_the_rule_uses_the_smaller_of_affinity_and_quota(affinity, quota, usable, threads):
    choice = device.choose_threads({}, affinity=affinity, quota=quota)
    assert (choice.usable, choice.threads) == (usable, threads)
    assert f"torch threads: {threads}" in choice.describe() and device.THREADS_VARIABLE in choice.describe()


def test_the_variables_override_the_rule_and_bad_values_are_refused():
    assert device.choose_threads({"COURSE_NUM_THREADS": "3"}, affinity=2, quota=None).threads == 3
    both = device.choose_threads({"COURSE_NUM_THREADS": "2", "OMP_NUM_THREADS": "1"}, affinity=8, quota=None)
    assert (both.threads, both.source) == (2, "set by COURSE_NUM_THREADS")
    assert device.choose_threads({"OMP_NUM_THREADS": "4"}, affinity=8, quota=None).threads == 4
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ValueError, match="COURSE_NUM_THREADS must be a whole number"):
            device.choose_threads({"COURSE_NUM_THREADS": bad}, affinity=2, quota=None)


def run_python(code, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS",
                                                              "COURSE_NUM_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_importing_course_sets_torch_threads_before_or_after_torch():
    expected = str(device.choose_threads({}).threads)
    after = run_python("import torch, course; print(torch.get_num_threads())")
    before = run_python("import course, os, torch; print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    assert after == [expected] and before == [expected, expected]
    assert run_python("import torch, course; print(torch.get_num_threads())", COURSE_NUM_THREADS="2") == ["2"]


def test_the_self_check_reports_the_choice():
    out = run_python("import course.device as d, torch; print(d.thread_report()); torch.set_num_threads(2); "
                     "print(d.thread_report())", COURSE_NUM_THREADS="1")
    text = " ".join(out)
    assert "torch threads: 1 (set by COURSE_NUM_THREADS" in text and "but torch now runs 2" in text
