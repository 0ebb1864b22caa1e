#!/usr/bin/env python3
"""Interleaved A/B of criterion bench binaries: the honest way to compare two builds on a machine
whose speed drifts (a shared VM's neighbours move a pass over X by ±30% within minutes).

    scripts/bench_ab.py ROUNDS FILTER BIN [BIN ...]

Runs each binary (a copy of `target/release/deps/<bench>-<hash>` from each build) ROUNDS times in
turn with `--bench FILTER --warm-up-time 1 --measurement-time 3 --noplot`, reads every benchmark's
own `time: [low median high]` line, and prints the minimum over rounds of each median, one column
per binary. Run it from a scratch folder: criterion writes its estimates under ./target there.
"""
import collections
import re
import subprocess
import sys

UNIT_US = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def medians(binary, filt):
    """{benchmark id: median in µs} from one run of a criterion binary."""
    out = subprocess.run([binary, "--bench", filt, "--warm-up-time", "1", "--measurement-time", "3", "--noplot"],
                         capture_output=True, text=True, check=True).stdout
    found, name = {}, None
    for line in out.splitlines():
        head = re.match(r"^(\S+/\S+)", line)
        if head:
            name = head.group(1)
        time = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        if time and name and "%" not in line:  # "change: time: [−1.2% …]" lines are not times
            found[name] = float(time.group(1)) * UNIT_US[time.group(2)]
            name = None
    return found


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    rounds, filt, bins = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    best = collections.defaultdict(dict)
    for _ in range(rounds):
        for b in bins:
            for name, us in medians(b, filt).items():
                best[name][b] = min(best[name].get(b, float("inf")), us)
    print(f"{'benchmark':45}" + "".join(f"{b.split('/')[-1]:>18}" for b in bins))
    for name in sorted(best):
        print(f"{name:45}" + "".join(f"{best[name].get(b, float('nan')):16.2f}us" for b in bins))


if __name__ == "__main__":
    main()
