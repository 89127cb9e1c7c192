#!/usr/bin/env python3
"""What this disk charges for making a small append durable, three ways.

Writes 600 bytes at a time (about one small Raft entry) to a file in DIR
(default: the current directory), each followed by one of:

  sync_file_range   what sled 0.34's flush does on Linux (no device cache
                    flush, no metadata)
  fdatasync         what a durable log needs
  both              what the log store does now: sled's flush, then fdatasync

once overwriting a preallocated file and once growing it (a growing file
also needs its new length journaled). Prints p50 and p90 of each.

Usage: python3 scripts/bench-fsync.py [DIR] [COUNT]   (docs/benchmarks.md,
"Durability: the fsync that sled's flush left out")
"""
import ctypes
import os
import sys
import tempfile
import time

LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
SYNC_FILE_RANGE_ALL = 1 | 2 | 4  # WAIT_BEFORE | WRITE | WAIT_AFTER
RECORD = b"x" * 600
STRIDE = 4096


def sync_file_range(fd, offset, length):
    if LIBC.sync_file_range(fd, ctypes.c_longlong(offset), ctypes.c_longlong(length),
                            SYNC_FILE_RANGE_ALL) != 0:
        raise OSError(ctypes.get_errno(), "sync_file_range")


def fdatasync(fd, _offset, _length):
    os.fdatasync(fd)


def both(fd, offset, length):
    sync_file_range(fd, offset, length)
    os.fdatasync(fd)


def measure(directory, count, name, sync, grow):
    fd, path = tempfile.mkstemp(dir=directory, prefix="bench-fsync-")
    try:
        if not grow:
            os.pwrite(fd, b"\0" * (STRIDE * count + STRIDE), 0)
            os.fsync(fd)
        times = []
        for i in range(count):
            os.pwrite(fd, RECORD, i * STRIDE)
            start = time.perf_counter()
            sync(fd, i * STRIDE, len(RECORD))
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    how = "growing" if grow else "overwriting"
    print(f"{name:<16} {how:<12} p50 {times[count // 2] * 1e3:.3f} ms"
          f"  p90 {times[count * 9 // 10] * 1e3:.3f} ms")


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else "."
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 500
    for grow in (False, True):
        for name, sync in (("sync_file_range", sync_file_range),
                           ("fdatasync", fdatasync), ("both", both)):
            measure(directory, count, name, sync, grow)


if __name__ == "__main__":
    main()
