"""Widget latency in a real browser: from the input event to the first frame that shows the new image, loaded (median
and p95).

JupyterLab in headless Chromium opens tests/browser/widget_gallery.ipynb with GALLERY_SIZE=full (every widget at the
size its notebook uses), runs it all, and then moves each widget's controls from the keyboard as a person would. The
first move of each widget happens right after Run All has finished. A move is "new" when the widget must compute
that setting, "cached" when it only swaps an image it already has (a scrubber swaps its images in the page, with no
round trip to the kernel). `uptime`'s load average is recorded beside the
figures: a loaded machine is slower, and the figures say how loaded it was.

    python browser_latency.py [--name browser_latency] [--threads N]
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from common import print_table, save  # noqa: E402
from jupyterlab_server import (ConsoleErrors, LabServer, arm_latency_probe, image_sources, launch_browser,  # noqa: E402
                               move_control, open_notebook, run_all_and_wait, wait_for_new_image)

# per widget: (action, argument, new or cached); the gallery's start values make each one's kind known
PLAN = {
    "scrubber": [("key", "ArrowRight", "cached")] * 5 + [("key", "ArrowLeft", "cached")] * 5,
    "attention": [("key", "ArrowRight", "cached")] * 3 + [("select", "head 1", "new"), ("key", "ArrowLeft", "new"),
                  ("select", "head 0", "cached")],
    "ddim": [("select", "10", "new"), ("select", "20", "new"), ("key", "ArrowLeft", "new"),
             ("key", "ArrowLeft", "new"), ("select", "5", "cached")],
    "guidance": [("key", "ArrowRight", "new")] * 5 + [("key", "ArrowLeft", "cached")] * 2,
    "pag": [("key", "ArrowRight", "cached"), ("click", "all three", "new"), ("key", "ArrowRight", "new"),
            ("key", "ArrowRight", "new"), ("click", "mid", "cached")],
    "ldm": [("key", "ArrowRight", "new"), ("key", "ArrowLeft", "cached"), ("key", "ArrowLeft", "new"),
            ("key", "ArrowLeft", "new")],
    "controlnet": [("key", "ArrowRight", "new"), ("key", "ArrowRight", "new"), ("key", "ArrowLeft", "cached"),
                   ("key", "ArrowLeft", "cached"), ("key", "ArrowLeft", "new")],
    "lora": [("key", "ArrowRight", "new"), ("key", "ArrowRight", "new"), ("key", "ArrowLeft", "cached"),
             ("key", "ArrowLeft", "cached"), ("key", "ArrowLeft", "new")],
}


def click_latency(page, box, text):
    """Click a toggle button by its text and time the click to the first frame showing the new image."""
    before = image_sources(page, box)
    arm_latency_probe(page, box, before)
    button = page.locator(f"{box} button", has_text=text).first
    button.scroll_into_view_if_needed()
    page.evaluate("() => { window.__probe.key = performance.now(); }")
    button.click()
    wait_for_new_image(page, box, before, 300_000)
    page.wait_for_function("() => window.__probe.shown !== null", timeout=300_000, polling="raf")
    return page.evaluate("() => window.__probe.shown - window.__probe.key")


def measure(threads=None):
    from playwright.sync_api import sync_playwright

    env = {"GALLERY_SIZE": "full"}
    if threads:
        env["COURSE_NUM_THREADS"] = str(threads)
    rows, load_before = [], os.getloadavg()
    with LabServer(env=env) as lab, sync_playwright() as playwright:
        browser = launch_browser(playwright)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = ConsoleErrors(page)
        open_notebook(page, lab)
        run_all_s = run_all_and_wait(page, timeout_ms=900_000)
        for name, plan in PLAN.items():
            box = f".gallery-{name}"
            for i, (action, argument, kind) in enumerate(plan):
                if action == "key":
                    ms = move_control(page, box, key=argument, probe=True, timeout_ms=300_000)
                elif action == "select":
                    ms = move_control(page, box, select=argument, probe=True, timeout_ms=300_000)
                else:
                    ms = click_latency(page, box, argument)
                rows.append({"widget": name, "move": i, "action": f"{action} {argument}", "kind": kind,
                             "first_after_run_all": i == 0, "ms": round(ms, 1)})
                print(f"{name:>10} {i} {action} {argument:<10} {kind:<6} {ms:8.1f} ms", flush=True)
        browser.close()
    return rows, run_all_s, load_before, os.getloadavg(), errors


def summarise(rows):
    out = []
    for name in PLAN:
        for kind in ("new", "cached"):
            ms = sorted(r["ms"] for r in rows if r["widget"] == name and r["kind"] == kind)
            if not ms:
                continue
            first = [r["ms"] for r in rows if r["widget"] == name and r["first_after_run_all"] and r["kind"] == kind]
            out.append({"widget": name, "kind": kind, "moves": len(ms), "median_ms": statistics.median(ms),
                        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))], "max_ms": ms[-1],
                        "first_after_run_all_ms": first[0] if first else "-"})
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default="browser_latency", help="results/NAME.json")
    parser.add_argument("--threads", type=int, default=None, help="COURSE_NUM_THREADS for the kernel")
    args = parser.parse_args()
    start = time.perf_counter()
    rows, run_all_s, load_before, load_after, errors = measure(args.threads)
    table = summarise(rows)
    print_table(table, f"Browser latency, input -> new image loaded (Run All {run_all_s:.1f} s; load average "
                       f"{load_before[0]:.2f} before, {load_after[0]:.2f} after)")
    print(f"console errors: {len(errors)}; {time.perf_counter() - start:.0f} s in all")
    save(args.name, table + [{"moves": rows}, {"settings": {
        "run_all_s": round(run_all_s, 1), "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after], "kernel_threads": args.threads or "course's rule",
        "cpus": os.cpu_count(), "console_errors": list(errors)}}])


if __name__ == "__main__":
    main()
