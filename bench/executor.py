# executor.py - the ProcessPoolExecutor side of `make bench`: the workloads
# forkpool is measured against, run with Python's own executor (standard
# library only). Embedded in forkpool-bench and run as
#
#     python3 -c <this file> WORKLOAD N WORKERS
#
# It prints one JSON line: {"seconds", "items", "p50_ms", "p99_ms",
# "rss_kib", "python"}. The pool is started and warmed (every worker process
# up) before the clock starts, as forkpool's workers are preforked.
import concurrent.futures as cf
import json
import os
import platform
import resource
import sys
import time


def square(x):
    return x * x


def noop(x):
    return x


def percentile(sorted_ms, p):
    if not sorted_ms:
        return None
    k = min(len(sorted_ms) - 1, int(round(p / 100.0 * (len(sorted_ms) - 1))))
    return sorted_ms[k]


def w1(ex, n):
    """list(ex.map(square, range(n), chunksize=10000)): the batch's throughput."""
    t0 = time.perf_counter()
    out = list(ex.map(square, range(n), chunksize=10000))
    secs = time.perf_counter() - t0
    if len(out) != n or (n and out[-1] != (n - 1) * (n - 1)):
        raise SystemExit("executor.py: wrong results")
    return secs, []


def w2(ex, n):
    """n sequential ex.submit(noop, i).result(): one call's round trip."""
    for i in range(20):
        ex.submit(noop, i).result()
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        if ex.submit(noop, i).result() != i:
            raise SystemExit("executor.py: wrong result")
        lat.append((time.perf_counter() - s) * 1000.0)
    return time.perf_counter() - t0, lat


def w3(ex, n):
    """n single calls submitted at once, collected with as_completed."""
    t0 = time.perf_counter()
    futs = [ex.submit(square, i) for i in range(n)]
    done = sum(1 for f in cf.as_completed(futs) if f.result() is not None)
    secs = time.perf_counter() - t0
    if done != n:
        raise SystemExit("executor.py: lost results")
    return secs, []


def main():
    if len(sys.argv) != 4 or sys.argv[1] not in ("W1", "W2", "W3"):
        raise SystemExit("usage: executor.py W1|W2|W3 N WORKERS")
    work, n, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    with cf.ProcessPoolExecutor(max_workers=workers) as ex:
        list(ex.map(noop, range(workers * 4)))  # every worker started
        secs, lat = {"W1": w1, "W2": w2, "W3": w3}[work](ex, n)
    lat.sort()
    print(json.dumps({
        "seconds": secs,
        "items": n,
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "python": platform.python_version(),
    }))


if __name__ == "__main__":
    main()
