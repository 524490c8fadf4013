"""Wall time and peak memory of a command and every process it starts (Linux /proc).

`/usr/bin/time -f %M` reports the largest single process; a Dagster run with the multiprocess executor holds
several step processes at once, so this samples the summed resident memory of the whole process tree:

    python bench/peak_rss.py [--interval 0.5] -- make demo

It prints one line at the end: wall seconds, peak summed RSS (GiB) and the most processes seen at once.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss(root: int) -> tuple[int, int]:
    """(summed RSS in bytes, number of processes) of `root` and all its descendants."""
    total, n, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        total += _rss_bytes(pid)
        n += 1
        stack.extend(_children(pid))
    return total, n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between samples")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    peak, most = 0, 0
    while proc.poll() is None:
        rss, n = tree_rss(proc.pid)
        peak, most = max(peak, rss), max(most, n)
        time.sleep(args.interval)
    wall = time.perf_counter() - started
    print(f"peak_rss: {wall:.0f} s wall, peak memory {peak / 2**30:.2f} GiB (process tree, sampled every "
          f"{args.interval} s), at most {most} processes, exit status {proc.returncode}", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
