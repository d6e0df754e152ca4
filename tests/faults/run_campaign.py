"""Run one fault campaign on a fresh lab from the command line (``scripts/fault-test.sh``).

    python tests/faults/run_campaign.py --nodes 3 --nemesis mixed --duration 300 --seed 7 --out DIR

``--nemesis`` is ``mixed`` (every kind that fits the lab) or a comma-separated list of
kinds (``nemesis.KINDS``). It prints the report, keeps ``DIR/history.jsonl``,
``DIR/report.md`` and ``DIR/timeline.png`` (and the nodes' logs under ``DIR/lab``), and
exits 1 when a checker found a violation. The node logs count as a checker too: a line
with "BUG:" or a Python traceback (an apply listener that raised, a task that died)
fails the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from campaign import run_campaign
from checkers import Result
from lab import Lab
from nemesis import KINDS, kinds_for

BUG_MARKERS = ("BUG:", "Traceback (most recent call last)")


def node_errors(workdir: Path) -> Result:
    """Lines in the nodes' logs that only a bug writes."""
    found = []
    for log in sorted(workdir.glob("n*.log")):
        for number, line in enumerate(log.read_text(errors="replace").splitlines(), 1):
            if any(marker in line for marker in BUG_MARKERS):
                found.append(f"{log.name}:{number}: {line.strip()[:200]}")
    return Result("node-errors", not found, len(found), found[:5])


def campaign_on_fresh_lab(
    nodes: int, nemesis: str, duration: float, seed: int, out: Path
) -> dict[str, Result]:
    kinds = kinds_for(nodes) if nemesis == "mixed" else tuple(nemesis.split(","))
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise SystemExit(f"unknown nemesis kinds {sorted(unknown)}; known: {', '.join(KINDS)}")
    workdir = out / "lab"
    workdir.mkdir(parents=True, exist_ok=True)
    with Lab(workdir, nodes=nodes) as lab:
        lab.wait_for_leader()
        results = run_campaign(lab, kinds, duration, seed, out)
    results["node-errors"] = node_errors(workdir)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--nemesis", default="mixed")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    reason = Lab.available()
    if reason is not None:
        print(f"fault-test: cannot run here: {reason}", file=sys.stderr)
        return 2
    results = campaign_on_fresh_lab(args.nodes, args.nemesis, args.duration, args.seed, args.out)
    print((args.out / "report.md").read_text())
    errors = results["node-errors"]
    print(f"node-errors: {errors.count} {errors.examples}")
    return 0 if all(result.ok for result in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
