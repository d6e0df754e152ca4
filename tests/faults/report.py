"""A campaign's report in Markdown: what ran, each checker's verdict, and availability.

Kept apart from the campaign so the text can be rendered again from a kept history
(``check(load(path))``) without running anything.
"""

from __future__ import annotations

import json
from typing import Any

from checkers import Result


def render_report(results: dict[str, Result], run: dict[str, Any]) -> str:
    """``run`` describes the campaign (nodes, nemeses, duration, seed...), one row a key."""
    lines = ["# Fault campaign", ""]
    lines += [f"- {key}: {value}" for key, value in run.items()]
    lines += ["", "| checker | verdict | count | first example |", "|---|---|---|---|"]
    for name, result in results.items():
        if name == "availability":
            continue
        verdict = "ok" if result.ok else "**VIOLATED**"
        example = _cell(result.examples[0]) if result.examples else ""
        lines.append(f"| {name} | {verdict} | {result.count} | {example} |")
    availability = results.get("availability")
    if availability is not None and availability.examples:
        lines += ["", "## Availability (publishes acknowledged)", ""]
        lines += ["| period | acknowledged | publishes | share |", "|---|---|---|---|"]
        for period, figure in availability.examples[0].items():
            share = "n/a" if figure["share"] is None else f"{figure['share']:.1%}"
            lines.append(
                f"| {period} | {figure['acknowledged']} | {figure['publishes']} | {share} |"
            )
    violated = [r for r in results.values() if not r.ok]
    if violated:
        lines += ["", "## Examples", ""]
        for result in violated:
            lines.append(f"### {result.name} ({result.count})")
            lines += ["", "```"]
            lines += [json.dumps(example, sort_keys=True) for example in result.examples]
            lines += ["```", ""]
    return "\n".join(lines) + "\n"


def _cell(example: Any) -> str:
    """An example squeezed into one table cell."""
    return "`" + json.dumps(example, sort_keys=True).replace("|", "\\|") + "`"
