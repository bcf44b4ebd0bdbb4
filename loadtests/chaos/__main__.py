"""``python -m loadtests.chaos --seed N --duration S [--cluster]``: one seeded chaos run;
exits 1 when an invariant broke (the report names the seed and the offending log lines)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from loadtests.chaos import run_chaos


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults")
    p.add_argument("--cluster", action="store_true", help="on a 6-node Redis Cluster")
    p.add_argument("--gateways", type=int, default=2)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--viewers-per-session", type=int, default=2)
    p.add_argument("--tokens-per-second", type=float, default=60.0)
    p.add_argument("--json", type=Path, help="also write the report as JSON here")
    a = p.parse_args()
    report = asyncio.run(
        run_chaos(
            a.seed,
            a.duration,
            cluster=a.cluster,
            gateways=a.gateways,
            workers=a.workers,
            sessions=a.sessions,
            viewers_per_session=a.viewers_per_session,
            tokens_per_second=a.tokens_per_second,
        )
    )
    print(report.render())
    if a.json:
        a.json.write_text(report.to_json())
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
