#!/usr/bin/env python3
"""hyperd's memory under the hostile-guest floods (issue 13, H1/M3).

Runs the e2e cases of tests/tests/hostile_guest.rs (each boots a pod whose
initramfs /init is tests/hostile-init running one attack) and collects the
`FIGURE` line each prints: hyperd's idle RSS, its peak RSS (VmHWM) over the
attack, its RSS afterwards, the bound the test asserts (2 x idle + 16 MiB)
and the log lines the attack added. Prints them as a Markdown table.

Needs `make build payload rootfs hostile-init` first.

    bench/hostile_rss.py [TEST_NAME_FILTER]
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURE = re.compile(r"^FIGURE (.*)$", re.M)


def main():
    filt = sys.argv[1:] or []
    cmd = ["cargo", "test", "--release", "-p", "hyper-tests", "--test", "hostile_guest",
           "--", "--nocapture", "--test-threads=1", *filt]
    print("$", " ".join(cmd), file=sys.stderr)
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = run.stdout + run.stderr
    rows = [dict(kv.split("=", 1) for kv in m.split()) for m in FIGURE.findall(out)]
    if not rows:
        print(out[-4000:], file=sys.stderr)
        sys.exit(f"no FIGURE lines (cargo exit {run.returncode})")
    mib = lambda kib: f"{int(kib) / 1024:.1f}"
    print("| attack | idle RSS MiB | peak RSS MiB | RSS after MiB | bound MiB | log lines |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['attack']} | {mib(r['idle_kib'])} | {mib(r['peak_kib'])} | "
              f"{mib(r['rss_after_kib'])} | {mib(r['bound_kib'])} | {r['log_lines']} |")
    if run.returncode != 0:
        print(out[-4000:], file=sys.stderr)
        sys.exit(f"some cases failed (cargo exit {run.returncode})")


if __name__ == "__main__":
    main()
