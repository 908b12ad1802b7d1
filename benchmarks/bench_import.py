"""How long loading the definitions takes, against the floor of ``import dagster`` itself.

Each measurement runs in a fresh interpreter (nothing cached in ``sys.modules``); the median of ``--repeat``
runs is reported. ``python benchmarks/bench_import.py [--repeat 5]``
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

SNIPPETS = {
    "import dagster": "import dagster",
    "import ple_platform.definitions": "import ple_platform.definitions",
    "load_definitions()": "from ple_platform.definitions import load_definitions; load_definitions()",
    "heavy libraries loaded by load_definitions()": None,
}
HEAVY = ("torch", "lightgbm", "sklearn", "scipy", "pandas", "geoopt", "gudhi", "torch_geometric", "matplotlib",
         "dagster_aws", "boto3", "alembic")


def timed(code: str) -> float:
    script = f"import time; t = time.perf_counter(); {code}; print(time.perf_counter() - t)"
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def heavy_loaded() -> list[str]:
    script = ("import sys; from ple_platform.definitions import load_definitions; load_definitions(); "
              f"print('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout
    # a marker: with nothing heavy loaded the line would otherwise be empty
    line = next(x for x in reversed(out.splitlines()) if x.startswith("loaded:"))
    return [m for m in line.removeprefix("loaded:").split(",") if m]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    medians = {}
    print("| measurement (fresh interpreter) | median s | runs |\n|---|---|---|")
    for label, code in SNIPPETS.items():
        if code is None:
            continue
        runs = [timed(code) for _ in range(args.repeat)]
        medians[label] = statistics.median(runs)
        print(f"| {label} | {medians[label]:.2f} | {', '.join(f'{r:.2f}' for r in runs)} |")
    base = medians["import dagster"]
    print(f"| load_definitions() / import dagster | {medians['load_definitions()'] / base:.2f}x | |")
    print(f"| load_definitions() minus import dagster | {medians['load_definitions()'] - base:.2f} | |")
    print(f"| heavy libraries in sys.modules after loading | {', '.join(heavy_loaded()) or 'none'} | |")


if __name__ == "__main__":
    main()
