#!/usr/bin/env python3
"""Waits until a cluster's nodes hold a number of devices, for scale.sh.

One process polls every node's /status in turn: at a million devices the script's old loop of
curl | jq per node (106 programs started every few seconds) took a third of a core from the run
it measured. Stops when the devices are all connected, when the count has not grown for
--stall seconds, when --timeout seconds have passed, or when the --abort file appears.
Prints a progress line per poll and, last, "PEAK SECONDS": the highest count and when the
wait ended, in seconds from --start.
"""
import argparse
import json
import os
import time
import urllib.request


def clients(port: int) -> int:
    """The devices one node holds (0 when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
            return int(json.load(r).get("clients", 0))
    except (OSError, ValueError):
        return 0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--devices", type=int, required=True)
    p.add_argument("--start", type=float, required=True, help="Unix time the tester started")
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--stall", type=float, default=30)
    p.add_argument("--interval", type=float, default=5)
    p.add_argument("--abort", required=True, help="file whose existence stops the wait")
    p.add_argument("ports", type=int, nargs="+")
    a = p.parse_args()
    peak, grew_at = 0, time.time()
    while True:
        total = sum(clients(port) for port in a.ports)
        now = time.time()
        if total > peak:
            peak, grew_at = total, now
        print(f"   {now - a.start:.0f} s: {total} devices connected", flush=True)
        if total >= a.devices or os.path.exists(a.abort):
            break
        if now - a.start >= a.timeout:
            break
        if peak > 0 and now - grew_at >= a.stall:
            print(f"   no growth for {a.stall:.0f} s: not waiting for the rest", flush=True)
            break
        time.sleep(a.interval)
    print(f"{peak} {time.time() - a.start:.0f}", flush=True)


if __name__ == "__main__":
    main()
