"""Timestep scrubber latency: from a slider value change to the new image being set, median and p95."""
import statistics
import time

import torch

from common import print_table, save
from course import datasets, widgets
from course.schedules import linear_schedule


def latencies(scrubber, moves: int = 400):
    gen = torch.Generator().manual_seed(0)
    last = scrubber.slider.max
    times = []
    for _ in range(moves):
        value = int(torch.randint(0, last + 1, (1,), generator=gen))
        if value == scrubber.slider.value:
            value = (value + 1) % (last + 1)
        start = time.perf_counter()
        scrubber.slider.value = value  # fires the observer, which swaps the PNG
        times.append(time.perf_counter() - start)
        assert scrubber.image.value == scrubber.pngs[value]
    times.sort()
    return statistics.median(times), times[int(0.95 * len(times))]


def main():
    schedule = linear_schedule()
    photo = datasets.digits("test")[0][0]
    points, _ = datasets.swiss_roll(n=2000)
    rows = []
    for name, x_0 in [("digit image", photo), ("swiss roll points", points)]:
        start = time.perf_counter()
        scrubber = widgets.forward_process_scrubber(x_0, schedule, range(0, 1000, 50))
        build = time.perf_counter() - start
        median, p95 = latencies(scrubber)
        rows.append({"scrubber": name, "frames": len(scrubber.pngs), "build_s": round(build, 2),
                     "median_ms": 1000 * median, "p95_ms": 1000 * p95})
    print_table(rows, "Scrubber: value change -> new image (prerendered frames)")
    save("scrubber_latency", rows)


if __name__ == "__main__":
    main()
