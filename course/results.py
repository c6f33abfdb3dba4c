"""The benchmarks' saved tables (``benchmarks/results/*.json``), read for the notebooks, and the league table.

Each benchmark script writes one record: {"benchmark": name, "date", "machine", "threads", "torch", "rows": [...]}.
Notebooks quote the full-size tables through ``read``; when a table has not been computed yet it says which
script makes it, instead of failing.
"""
from __future__ import annotations

import json
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "results"
SCRIPTS = {"ddim_table": "ddim_table.py", "sde_samplers": "sde_samplers.py", "cfg_table": "cfg_table.py",
           "pag_table": "pag_table.py", "controlnet_table": "controlnet_table.py", "lora_table": "lora_table.py",
           "league_table": "league_table.py", "ldm_table": "ldm_table.py", "flow_table": "flow_table.py"}


def script_for(name: str) -> str:
    """The command that writes benchmarks/results/NAME.json."""
    base, _, mode = name.rpartition("_")
    if base in SCRIPTS and mode in ("fast", "full"):
        return f"python benchmarks/{SCRIPTS[base]} --mode {mode}"
    return f"python benchmarks/{SCRIPTS.get(name, name + '.py')}"


def read(*names: str, directory: Path = RESULTS_DIR) -> dict | None:
    """The first of the saved records ``names`` that exists (e.g. "cfg_table_full", "cfg_table_fast"), or None."""
    for name in names:
        path = Path(directory) / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text())
    return None


def rows(*names: str, directory: Path = RESULTS_DIR, **where) -> list[dict]:
    """The rows of the first saved record of ``names`` whose fields equal ``where`` (key=value); [] if none is saved."""
    record = read(*names, directory=directory)
    if record is None:
        return []
    return [row for row in record["rows"] if all(row.get(key) == value for key, value in where.items())]


def seed_means(rows: list[dict], by: str, value: str = "fid") -> list[dict]:
    """Rows that differ only in ``seed``, averaged: one entry per value of ``by`` (in order of first appearance)
    with the mean and sample standard deviation of ``value`` over the seeds, the seeds, and the rows' floor.

    ``{by: ..., value + "_mean", value + "_sd" (None for one seed), "seeds", "n", "fid_floor_mean",
    "fid_floor_sd"}``; other numeric columns present in every row are averaged too (``class_accuracy``, ...).
    """
    groups: dict = {}
    for row in rows:
        groups.setdefault(row[by], []).append(row)
    out = []
    for key, group in groups.items():
        values = [r[value] for r in group]
        mean = sum(values) / len(values)
        sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
        entry = {by: key, f"{value}_mean": mean, f"{value}_sd": sd, "seeds": [r.get("seed") for r in group],
                 "n": group[0].get("n"), "fid_floor_mean": group[0].get("fid_floor_mean"),
                 "fid_floor_sd": group[0].get("fid_floor_sd")}
        for column in group[0]:
            if column not in entry and column not in (by, value, "seed", "seconds", "fid_floor") and all(
                    isinstance(r.get(column), (int, float)) and not isinstance(r.get(column), bool) for r in group):
                entry[column] = sum(r[column] for r in group) / len(group)
        out.append(entry)
    return out


def best_against_baseline(means: list[dict], by: str, baseline=0, value: str = "fid") -> dict:
    """The lowest mean ``value`` among ``seed_means`` entries, beside the baseline's (``by == baseline``):
    {best, best_mean, baseline_mean, gain (baseline - best), floor_sd, beyond_floor_sd (gain > floor_sd)}."""
    base = next(m for m in means if m[by] == baseline)
    best = min(means, key=lambda m: m[f"{value}_mean"])
    gain = base[f"{value}_mean"] - best[f"{value}_mean"]
    floor_sd = best.get("fid_floor_sd")
    return {"best": best[by], "best_mean": best[f"{value}_mean"], "baseline_mean": base[f"{value}_mean"],
            "gain": gain, "floor_sd": floor_sd, "beyond_floor_sd": floor_sd is not None and gain > floor_sd}


def missing(*names: str) -> str:
    """What to run to make the first of ``names``: the line a notebook prints in place of a table."""
    return f"run `{script_for(names[0])}` for the full-size table"


# --------------------------------------------------------------------------- the league table (notebook 11)

LEAGUE_TABLE = RESULTS_DIR / "league_table.json"


def read_league_table(path: Path = LEAGUE_TABLE) -> list[dict]:
    """The rows written by benchmarks/league_table.py: one per sampler or setting, each with its floor."""
    if not Path(path).exists():
        raise FileNotFoundError(f"no league table at {path}; compute it with: python benchmarks/league_table.py "
                                f"(or make bench)")
    return json.loads(Path(path).read_text())["rows"]


def format_league_table(rows: list[dict]) -> str:
    lines = [f"{'sampler':<44} {'n':>4} {'FID':>8} {'floor':>7} {'class acc.':>10} {'diversity':>9}"]
    for row in sorted(rows, key=lambda r: r["fid"]):
        accuracy = f"{row['class_accuracy']:.1%}" if row.get("class_accuracy") is not None else "-"
        lines.append(f"{row['sampler']:<44} {row['n']:>4} {row['fid']:>8.2f} {row['fid_floor']:>7.2f} "
                     f"{accuracy:>10} {row['diversity']:>9.2f}")
    return "\n".join(lines)
