#!/usr/bin/env python3
"""The e2e test matrix: one list (tests/cases.toml), read by every leg.

  matrix.py check                     every #[test] of tests/tests/*.rs is listed, every listed one exists
  matrix.py targets BACKEND           the test files (cargo test targets) with cases for BACKEND
  matrix.py cases BACKEND TARGET      their exact names, one a line
  matrix.py exe PACKAGE TARGET        the path of a built test binary (release)
  matrix.py run-qemu                  the QEMU leg: each target's qemu cases, by exact name
  matrix.py stage BACKEND SHARE       an emulated leg's share: SHARE/e2e/TARGET binaries, SHARE/cases/TARGET names
  matrix.py collect BACKEND SHARE     shows, checks and verifies SHARE/results/e2e-TARGET.{txt,rc}
  matrix.py verify BACKEND TARGET OUT every listed case of TARGET ran and passed in libtest output OUT;
                                      appends the per-case results to build/matrix/BACKEND.txt
  matrix.py reset BACKEND             a leg starts: empties build/matrix/BACKEND.txt
  matrix.py table                     cases x backends from build/matrix/*.txt

A leg's selection is the list unless <LEG>_CASES (QEMU_CASES, XEN_CASES, NK_CASES) names
exact cases, space-separated; those must be in the list but need not be tagged for the leg.
HYPER_CASES names another list file (for trying the machinery).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES_FILE = os.environ.get("HYPER_CASES", os.path.join(ROOT, "tests", "cases.toml"))
RESULTS = os.path.join(ROOT, "build", "matrix")
BACKENDS = ("qemu", "xen", "kvm")
OVERRIDE = {"qemu": "QEMU_CASES", "xen": "XEN_CASES", "kvm": "NK_CASES"}
PACKAGE = "hyper-tests"


class Bad(Exception):
    """A problem to report in one line, naming the file and the fix."""


def rel(path):
    return os.path.relpath(path, ROOT) if path.startswith(ROOT) else path


def load():
    """{target: {name: {"on": [...], backend: reason}}}, validated."""
    try:
        with open(CASES_FILE, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise Bad(f"{rel(CASES_FILE)}: cannot read it: {e.strerror}")
    except tomllib.TOMLDecodeError as e:
        raise Bad(f"{rel(CASES_FILE)}: not valid TOML: {e}")
    problems = []
    for target, cases in data.items():
        if not isinstance(cases, dict):
            problems.append(f"[{target}] must be a table of cases (one `name = {{ on = [...] }}` a line)")
            continue
        for name, case in cases.items():
            where = f"[{target}] {name}"
            if not isinstance(case, dict) or not isinstance(case.get("on"), list):
                problems.append(f"{where}: needs `on = [backends]`")
                continue
            for key, value in case.items():
                if key != "on" and key not in BACKENDS:
                    problems.append(f"{where}: unknown key `{key}` (keys: on, {', '.join(BACKENDS)})")
                elif key != "on" and not (isinstance(value, str) and value.strip()):
                    problems.append(f"{where}: `{key}` must be the reason, a non-empty string")
            for b in case["on"]:
                if b not in BACKENDS:
                    problems.append(f"{where}: unknown backend `{b}` in on (backends: {', '.join(BACKENDS)})")
                elif b in case:
                    problems.append(f"{where}: runs on {b} and gives a reason it does not; drop one")
            for b in BACKENDS:
                if b not in case["on"] and b not in case:
                    problems.append(f'{where}: left off {b} without a reason: add {b} = "why"')
    if problems:
        raise Bad(f"{rel(CASES_FILE)}:\n  " + "\n  ".join(problems))
    return data


def selection(data, backend):
    """{target: [names]} for a leg: the tagged cases, or the exact names of the override."""
    var = OVERRIDE[backend]
    only = os.environ.get(var)
    if only is None or not only.strip():
        sel = {t: [n for n, c in cases.items() if backend in c["on"]] for t, cases in data.items()}
        return {t: ns for t, ns in sel.items() if ns}
    sel = {}
    where = {n: t for t, cases in data.items() for n in cases}
    for name in only.split():
        if name not in where:
            raise Bad(f"{var}: `{name}` is not a case in {rel(CASES_FILE)} (names are exact, no substrings)")
        sel.setdefault(where[name], []).append(name)
    return sel


def test_exes(package, target=None):
    """{target: path} of the release test binaries of a package (builds them if needed)."""
    cmd = ["cargo", "test", "--release", "-p", package, "--no-run", "--message-format=json"]
    if target:
        cmd += ["--test", target]
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise Bad(f"`{' '.join(cmd)}` failed (exit {out.returncode})")
    exes = {}
    for line in out.stdout.splitlines():
        try:
            m = json.loads(line)
        except ValueError:
            continue
        t = m.get("target") or {}
        if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in t.get("kind", []):
            exes[t["name"]] = m["executable"]
    return exes


def listed_in(exe):
    out = subprocess.run([exe, "--list", "--format", "terse"], stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise Bad(f"{exe} --list failed (exit {out.returncode})")
    return [l[: -len(": test")] for l in out.stdout.splitlines() if l.endswith(": test")]


def check(data):
    exes = test_exes(PACKAGE)
    if not exes:
        raise Bad(f"no test binaries of {PACKAGE} were built")
    problems = []
    for target, exe in sorted(exes.items()):
        names = listed_in(exe)
        known = data.get(target, {})
        table = f"[{target}]" if target in data else f"a new table [{target}] at the end"
        for n in names:
            if n not in known:
                problems.append(
                    f"tests/tests/{target}.rs: `{n}` is not in {rel(CASES_FILE)}: add to {rel(CASES_FILE)} "
                    f"under {table} the line\n"
                    f'    {n} = {{ on = ["qemu", "xen", "kvm"] }}\n'
                    f"  then, for each backend it cannot run on, drop it from `on` and say why, "
                    f'e.g. {{ on = ["qemu"], xen = "why", kvm = "why" }}'
                )
        for n in known:
            if n not in names:
                problems.append(
                    f"{rel(CASES_FILE)}: [{target}] {n} is not a test in tests/tests/{target}.rs (renamed or removed?): "
                    "rename or drop its line"
                )
    for target in data:
        if target not in exes:
            problems.append(f"{rel(CASES_FILE)}: [{target}] has no test file tests/tests/{target}.rs")
    if problems:
        raise Bad("the test matrix and the tests disagree:\n  " + "\n  ".join(problems))
    n = sum(len(c) for c in data.values())
    print(f"matrix: {rel(CASES_FILE)} lists all {n} e2e cases of {len(exes)} test files")


RESULT = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)\b")


def parse(path):
    """{name: ok|FAILED|ignored} and the libtest summary line (or None) of a test binary's output."""
    got, summary = {}, None
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                m = RESULT.match(line)
                if m:
                    got[m.group(1)] = m.group(2)
                elif line.startswith("test result:"):
                    summary = line.strip()
    except FileNotFoundError:
        pass
    return got, summary


def verify(data, backend, target, out):
    names = selection(data, backend).get(target, [])
    got, summary = parse(out)
    os.makedirs(RESULTS, exist_ok=True)
    counts = {"ok": 0, "FAILED": 0, "missing": 0}
    with open(os.path.join(RESULTS, f"{backend}.txt"), "a") as f:
        for n in names:
            status = got.get(n, "missing")
            if status == "ignored":
                status = "missing"
            counts[status] += 1
            f.write(f"{target} {n} {status}\n")
    for n in names:
        if got.get(n, "missing") != "ok":
            print(f"matrix: {backend} {target}: {n}: {'FAILED' if got.get(n) == 'FAILED' else 'did not run'}")
    extra = sorted(set(got) - set(names))
    for n in extra:
        print(f"matrix: {backend} {target}: {n} ran but is not selected for {backend} (a substring filter?)")
    # Not "test result:": .ci/run sums those lines; it adds "did not run" to the failed count.
    print(
        f"matrix: {backend} {target}: {len(names)} listed: {counts['ok']} passed, "
        f"{counts['FAILED']} failed, {counts['missing']} did not run"
    )
    if summary is None and names:
        print(f"matrix: {backend} {target}: no libtest summary in {out} (crash or timeout?)")
    return counts["ok"] == len(names) and not extra


def stage(data, backend, share):
    """An emulated leg's share: SHARE/e2e/TARGET (the test binary) and SHARE/cases/TARGET (its names)."""
    for d in ("e2e", "cases"):
        os.makedirs(os.path.join(share, d), exist_ok=True)
    for target, names in selection(data, backend).items():
        exe = test_exes(PACKAGE, target).get(target)
        if not exe:
            raise Bad(f"no test binary {target} in {PACKAGE} (tests/tests/{target}.rs)")
        shutil.copy2(exe, os.path.join(share, "e2e", target))
        with open(os.path.join(share, "cases", target), "w") as f:
            f.write("\n".join(names) + "\n")


def collect(data, backend, share):
    """An emulated leg's results (SHARE/results/e2e-TARGET.txt and .rc): shown, checked, recorded."""
    ok = True
    for target in selection(data, backend):
        out = os.path.join(share, "results", f"e2e-{target}.txt")
        print(f"matrix: {backend} {target}: {out}")
        try:
            with open(out, encoding="utf-8", errors="replace") as f:
                for line in f:
                    if re.match(r"^(test |failures:|---- |test result:)|.*panicked", line):
                        print(line, end="")
        except FileNotFoundError:
            print(f"matrix: {backend} {target}: no output (the machine did not get that far)")
        try:
            with open(os.path.join(share, "results", f"e2e-{target}.rc")) as f:
                rc = f.read().strip()
        except FileNotFoundError:
            rc = "none"
        if rc != "0":
            print(f"matrix: {backend} {target}: FAILED: exit {rc}")
            ok = False
        ok = verify(data, backend, target, out) and ok
    return ok


def run_qemu(data):
    """Each test file's qemu cases, by exact name; output to the terminal and build/matrix/qemu-TARGET.log."""
    sel = selection(data, "qemu")
    reset(data, "qemu")
    ok = True
    for target, names in sel.items():
        log = os.path.join(RESULTS, f"qemu-{target}.log")
        cmd = ["cargo", "test", "--release", "-p", PACKAGE, "--test", target, "--",
               "--exact", "--test-threads=2", *names]
        print(f"matrix: qemu {target}: {len(names)} cases", flush=True)
        with open(log, "w") as f:
            p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for chunk in iter(lambda: p.stdout.readline(), b""):
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                f.write(chunk.decode("utf-8", "replace"))
            rc = p.wait()
        passed = verify(data, "qemu", target, log)
        ok = ok and passed and rc == 0
    return ok


def reset(data, backend):
    """A leg starts: its results file lists only the cases its override leaves out, as skipped."""
    os.makedirs(RESULTS, exist_ok=True)
    sel = selection(data, backend)
    with open(os.path.join(RESULTS, f"{backend}.txt"), "w") as f:
        for target, cases in data.items():
            for name, case in cases.items():
                if backend in case["on"] and name not in sel.get(target, []):
                    f.write(f"{target} {name} skipped\n")


def table(data):
    results = {}
    for b in BACKENDS:
        path = os.path.join(RESULTS, f"{b}.txt")
        if not os.path.exists(path):
            continue
        results[b] = {}
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3:
                    results[b][(parts[0], parts[1])] = parts[2]
    reasons, rows = [], []
    word = {"ok": "passed", "FAILED": "FAILED", "missing": "NOT RUN", "skipped": "skipped"}
    for target, cases in data.items():
        for name, case in cases.items():
            cells = []
            for b in BACKENDS:
                if b in case["on"]:
                    if b not in results:
                        cells.append("leg not run")
                    else:
                        cells.append(word[results[b].get((target, name), "missing")])
                else:
                    if case[b] not in reasons:
                        reasons.append(case[b])
                    cells.append(f"n/a [{reasons.index(case[b]) + 1}]")
            rows.append((f"{target}::{name}", cells))
    # Cases run on a leg only through its override.
    for b, res in results.items():
        for (target, name), status in res.items():
            case = data.get(target, {}).get(name)
            if case is not None and b not in case["on"]:
                for label, cells in rows:
                    if label == f"{target}::{name}":
                        cells[BACKENDS.index(b)] = word[status] + " (extra)"
    width = max(len(r[0]) for r in rows)
    cw = max(12, *(len(c) for _, cells in rows for c in cells))
    print(f"{'case':<{width}}  " + "  ".join(f"{b:<{cw}}" for b in BACKENDS))
    for label, cells in rows:
        print(f"{label:<{width}}  " + "  ".join(f"{c:<{cw}}" for c in cells))
    for i, r in enumerate(reasons, 1):
        print(f"[{i}] {r}")
    # The failures again, last, so the tail of a long CI log names them.
    bad = [(label, b, c) for label, cells in rows for b, c in zip(BACKENDS, cells)
           if c.startswith(("FAILED", "NOT RUN"))]
    for label, b, c in bad:
        print(f"matrix: {b}: {label}: {c}")
    return not bad


def main(argv):
    if len(argv) < 1:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "exe" and len(args) == 2:
        path = test_exes(args[0], args[1]).get(args[1])
        if not path:
            raise Bad(f"no test binary {args[1]} in package {args[0]}")
        print(path)
        return 0
    data = load()
    if cmd == "check" and not args:
        check(data)
    elif cmd == "targets" and len(args) == 1 and args[0] in BACKENDS:
        print("\n".join(selection(data, args[0])))
    elif cmd == "cases" and len(args) == 2 and args[0] in BACKENDS:
        print("\n".join(selection(data, args[0]).get(args[1], [])))
    elif cmd == "reset" and len(args) == 1 and args[0] in BACKENDS:
        reset(data, args[0])
    elif cmd == "verify" and len(args) == 3 and args[0] in BACKENDS:
        return 0 if verify(data, *args) else 1
    elif cmd == "stage" and len(args) == 2 and args[0] in BACKENDS:
        stage(data, *args)
    elif cmd == "collect" and len(args) == 2 and args[0] in BACKENDS:
        return 0 if collect(data, *args) else 1
    elif cmd == "run-qemu" and not args:
        return 0 if run_qemu(data) else 1
    elif cmd == "table" and not args:
        return 0 if table(data) else 1
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except Bad as e:
        print(f"matrix: {e}", file=sys.stderr)
        sys.exit(1)
