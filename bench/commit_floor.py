"""What one durable SQLite commit costs at least on this machine: a bare Python loop committing one
row (a text key and five indexes) per transaction, WAL, `synchronous=FULL` — the CPU floor of a
run that is its own commit (the one-producer row of `e2e-throughput`), not a jobwire row. The
measurement itself is `bench.machine.commit_cost`, which `python -m bench` also prints beside its
table.

    .venv/bin/python -m bench.commit_floor [--n 3000]
"""

from __future__ import annotations

import argparse

from bench.machine import commit_cost


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    n = ap.parse_args().n
    c = commit_cost(n)
    print(
        f"{n:,} commits: CPU {c.cpu_us:.0f} µs each (user {c.user_us:.0f}, system {c.system_us:.0f}), "
        f"wall {c.wall_us:.0f} µs each"
    )


if __name__ == "__main__":
    main()
