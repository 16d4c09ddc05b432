#!/usr/bin/env python3
"""How long this machine's disk takes to make a write durable: the floor under every spool
commit (each group commit ends with one fdatasync).

    python3 bench/fsync_latency.py [DIR] [ROUNDS]

Writes 16 KiB at a new place of a preallocated 64 MiB file, then times fdatasync, ROUNDS times
(default 3000), in DIR (default: target/, on the same file system as the bench's spool file).
Prints the mean and percentiles in milliseconds. On a shared VM disk the figure changes from
hour to hour: run it beside the benchmark it explains.
"""
import os
import statistics
import sys
import time

directory = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "target")
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
os.makedirs(directory, exist_ok=True)
path = os.path.join(directory, "fsync-latency.tmp")
size, chunk = 64 << 20, 16384
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
try:
    os.ftruncate(fd, size)
    os.fsync(fd)
    data = os.urandom(chunk)
    ms = []
    for i in range(rounds):
        os.pwrite(fd, data, (i * chunk) % size)
        start = time.perf_counter()
        os.fdatasync(fd)
        ms.append((time.perf_counter() - start) * 1000)
finally:
    os.close(fd)
    os.unlink(path)
ms.sort()
def pct(p):
    return ms[int(p * (len(ms) - 1))]
print(f"fdatasync of 16 KiB, {rounds} times in {os.path.abspath(directory)}: "
      f"mean {statistics.mean(ms):.3f} ms, p10 {pct(.1):.3f}, p50 {pct(.5):.3f}, "
      f"p90 {pct(.9):.3f}, p99 {pct(.99):.3f}")
