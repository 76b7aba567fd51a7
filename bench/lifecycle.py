#!/usr/bin/env python3
"""Pod lifecycle benchmarks (issue 6), in one run:

1. exec:   `hyper exec POD true` round trips into one running pod, next to
           `hyper ps` (a plain API round trip, the floor of any hyper command).
2. logs:   a container writes N MiB of lines; then `hyper logs POD` reads them
           back: MiB/s of reading (and of writing, from run start to exit).
3. memory: hyperd's own RSS and PSS with 0, 10 and 50 idle pods (each pod is a
           VM process of its own: those are not hyperd's), and KiB per pod.

With `--against BIN_DIR` (another build's target/release; its payload in
BIN_DIR/../../build unless `--against-payload` says otherwise) both builds run,
each with its own hyperd: the exec/ps round trips and the log reads alternate
between the two builds (the order flipping each round); the log writes and the
memory steps run one build after the other. The pods run with `--network none`
unless `--network` names one.

    bench/lifecycle.py [--runs N] [--pods 10,50] [--log-mib 32] [--bin-dir target/release] [--payload build]
                       [--network none] [--against OTHER/target/release [--against-payload OTHER/build]]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from boot import (add_build_args, builds, git_rev, hyper, load_average, network_args,  # noqa: E402
                  remove_pods, start_hyperd, start_pods, summary)


def mem_kib(pid):
    rss = pss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    return rss, pss


def must(r):
    if r.returncode != 0:
        sys.exit(r.stderr.decode(errors="replace"))
    return r.stdout.decode()


def timed(f):
    t = time.monotonic()
    f()
    return time.monotonic() - t


def ratio_line(what, legs, key):
    if len(legs) == 2:
        print(f"  this / against, {what}: {statistics.median(legs[0][key]) / statistics.median(legs[1][key]):.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--pods", default="10,50")
    ap.add_argument("--log-mib", type=int, default=32)
    add_build_args(ap)
    ap.add_argument("--network", default="none", help="the pods' network (default none)")
    ap.add_argument("--concurrency", type=int, default=4, help="idle pods starting at once")
    a = ap.parse_args()
    net = network_args(a.network)
    work = tempfile.mkdtemp(prefix="hylc", dir="/tmp")
    legs = []
    try:
        for label, b, payload in builds(a):
            os.makedirs(os.path.join(work, label))
            proc, sock = start_hyperd(b, payload, os.path.join(work, label), a.backend)
            legs.append({"label": label, "bin": b, "proc": proc, "sock": sock, "ex": [], "ps": [], "reads": []})
            print(f"[{label}] {b} ({git_rev(b)})")
        print(f"load average before: {load_average()}")

        # 1. exec round trip
        for leg in legs:
            leg["pod"] = must(hyper(leg["bin"], leg["sock"], "run", "-d", *net, "--rootfs", a.rootfs, "--",
                                    "sleep", "3600")).strip()
        for i in range(a.runs):
            for leg in legs if i % 2 == 0 else legs[::-1]:
                b, sock = leg["bin"], leg["sock"]
                leg["ex"].append(timed(lambda: must(hyper(b, sock, "exec", leg["pod"], "true"))))
                leg["ps"].append(timed(lambda: must(hyper(b, sock, "ps"))))
        print(f"exec round trip (`hyper exec POD true`), {a.runs} runs each:")
        for leg in legs:
            print(f"  [{leg['label']}] exec  {summary(leg['ex'])}")
            print(f"  [{leg['label']}] ps    {summary(leg['ps'])}   (API round trip floor)")
            must(hyper(leg["bin"], leg["sock"], "rm", "-f", leg["pod"]))
        ratio_line("exec", legs, "ex")
        ratio_line("ps", legs, "ps")

        # 2. logs
        lines = a.log_mib * 1024 * 1024 // 100
        script = ("yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456"
                  f" | head -n {lines}")
        for leg in legs:
            b, sock = leg["bin"], leg["sock"]
            t = time.monotonic()
            leg["log_pod"] = must(hyper(b, sock, "run", "-d", *net, "--rootfs", a.rootfs, "--", "sh", "-c",
                                        script)).strip()
            must(hyper(b, sock, "wait", leg["log_pod"]))
            leg["write_s"] = time.monotonic() - t
        for i in range(3):
            for leg in legs if i % 2 == 0 else legs[::-1]:
                t = time.monotonic()
                out = subprocess.run([os.path.join(leg["bin"], "hyper"), "logs", leg["log_pod"]],
                                     env=dict(os.environ, HYPER_HOST=leg["sock"]), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
                leg["reads"].append(time.monotonic() - t)
                leg["log_bytes"] = len(out.stdout)
        for leg in legs:
            mib = leg["log_bytes"] / 1048576
            read = statistics.median(leg["reads"])
            print(f"[{leg['label']}] logs: {mib:.1f} MiB in {lines} lines; written (run start to exit, VM boot "
                  f"included) {mib / leg['write_s']:.1f} MiB/s; `hyper logs` read {mib / read:.1f} MiB/s "
                  f"(median of 3, {read * 1000:.0f} ms, {min(leg['reads']) * 1000:.0f}-"
                  f"{max(leg['reads']) * 1000:.0f})")
            must(hyper(leg["bin"], leg["sock"], "rm", leg["log_pod"]))
        ratio_line("`hyper logs` read time", legs, "reads")

        # 3. hyperd's memory with idle pods, one build after the other
        for leg in legs:
            b, sock, pid = leg["bin"], leg["sock"], leg["proc"].pid
            time.sleep(1)
            base = mem_kib(pid)
            print(f"[{leg['label']}] hyperd memory, 0 pods: RSS {base[0]} KiB, PSS {base[1]} KiB")
            ids = []
            try:
                for n in [int(x) for x in a.pods.split(",") if x]:
                    new, errors = start_pods(b, sock, n - len(ids), a.rootfs, "64", a.network, a.concurrency)
                    ids += new
                    if errors:
                        sys.exit(f"{len(errors)} idle pods failed: {errors[0]}")
                    time.sleep(2)
                    rss, pss = mem_kib(pid)
                    print(f"[{leg['label']}] hyperd memory, {n} idle pods: RSS {rss} KiB, PSS {pss} KiB; "
                          f"growth {(rss - base[0]) / n:.0f} KiB/pod (RSS), {(pss - base[1]) / n:.0f} KiB/pod (PSS)")
            finally:
                remove_pods(b, sock, ids, a.concurrency)
            for p in json.loads(must(hyper(b, sock, "ps", "-a", "--json"))):
                hyper(b, sock, "rm", "-f", p["id"])
        print(f"load average after: {load_average()}")
    finally:
        for leg in legs:
            leg["proc"].terminate()
            try:
                leg["proc"].wait(timeout=120)
            except subprocess.TimeoutExpired:
                leg["proc"].kill()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
