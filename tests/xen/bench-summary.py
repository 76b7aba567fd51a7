#!/usr/bin/env python3
"""The Xen leg's benchmark (SHARE/results/bench.txt, lines `LABEL N rc=RC SECONDS`):
per label the runs that succeeded, median, min and max, and each median as a
multiple of the plain `xl create` one.

  bench-summary.py BENCH.TXT
"""
import statistics
import sys

BASE = "xl-create"


def main(path):
    runs = {}
    failed = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4 or not parts[2].startswith("rc="):
                continue
            label, rc, secs = parts[0], parts[2][3:], parts[3]
            try:
                value = float(secs)
            except ValueError:
                continue
            if rc == "0":
                runs.setdefault(label, []).append(value)
            else:
                failed[label] = failed.get(label, 0) + 1
    base = statistics.median(runs[BASE]) if runs.get(BASE) else None
    for label, values in runs.items():
        med = statistics.median(values)
        ratio = f", {med / base:.2f}x plain xl create" if base else ""
        bad = f", {failed[label]} failed" if label in failed else ""
        print(f"xen-suite: bench {label}: median {med:.2f} s over {len(values)} runs "
              f"(min {min(values):.2f}, max {max(values):.2f}){ratio}{bad}")
    for label in failed.keys() - runs.keys():
        print(f"xen-suite: bench {label}: all {failed[label]} runs failed")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
