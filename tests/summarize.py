#!/usr/bin/env python3
"""Totals the checks of a `meson test` run from its JSON log.

Every ssmd test program ends with `suite: N passed, N failed[, N skipped]`;
pytest ends with `N passed, N failed ...`. A test that crashed or timed out
before printing its line counts as one failure. Prints one line per suite and
the grand total `N passed, N failed, N skipped` last.
"""
import json
import re
import sys

SUITE = re.compile(r"^(?:([\w.+-]+): )?(\d+) passed(?:, (\d+) failed)?(?:, (\d+) skipped)?\s*$")
PYTEST = re.compile(r"^=*\s*((?:\d+ \w+(?:, )?)+) in [\d.]+s")


def parse(stdout):
    """Returns (passed, failed, skipped) from the last summary line, or None."""
    for line in reversed(stdout.splitlines()):
        m = SUITE.match(line.strip())
        if m:
            return int(m.group(2)), int(m.group(3) or 0), int(m.group(4) or 0)
        m = PYTEST.search(line)
        if m:
            counts = dict((k, 0) for k in ("passed", "failed", "skipped", "error", "errors"))
            for part in m.group(1).split(","):
                bits = part.strip().split(" ")
                if len(bits) >= 2 and bits[0].isdigit() and bits[1] in counts:
                    counts[bits[1]] += int(bits[0])
            return counts["passed"], counts["failed"] + counts["error"] + counts["errors"], counts["skipped"]
    return None


def main(path):
    tp = tf = ts = 0
    with open(path) as f:
        for raw in f:
            t = json.loads(raw)
            res = t.get("result", "")
            got = parse(t.get("stdout", "") or "")
            if got is None:
                got = (0, 0, 1) if res == "SKIP" else ((1, 0, 0) if res == "OK" else (0, 1, 0))
            p, fl, s = got
            if res not in ("OK", "SKIP", "EXPECTEDFAIL") and fl == 0:
                fl = 1  # crashed or timed out after (or without) its summary
            print(f"  {t['name']:<28} {res:<8} {p} passed, {fl} failed, {s} skipped")
            tp, tf, ts = tp + p, tf + fl, ts + s
    print(f"{tp} passed, {tf} failed, {ts} skipped")
    return 1 if tf else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
