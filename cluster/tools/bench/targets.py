"""The single-node targets BENCHMARKS.md reports, judged from ``bench compare --all``.

Every target is a ratio measured in the same run. A throughput target is
only met when raftmq's runs were also clean: a fast run that lost messages
does not count. A target whose figures are missing (a broker left out, a
case not run, a run that failed) is "not measured", never met.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Results = dict[str, Any]
CaseResult = dict[str, Any]

MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"

MOSQUITTO_RATIO_CASES = (
    "pairs-10-q0",
    "pairs-10-q1",
    "pairs-100-q0",
    "pairs-100-q1",
    "fanin-q0",
    "fanout-q0",
    "fanout-q1",
)
MIN_VS_MOSQUITTO = 0.5
MIN_VS_AMQTT = 5.0
MAX_LATENCY_VS_MOSQUITTO = 2.0
MAX_CONNS_TIME_VS_MOSQUITTO = 2.0
MAX_RSS_PER_CONN = 8192
LOWER_IS_BETTER = frozenset({"latency_ms.p99", "elapsed_s", "broker_rss_per_conn"})


@dataclass(frozen=True, slots=True)
class Target:
    target: str
    measured: str
    status: str


def median(case: CaseResult | None, broker: str, key: str) -> float | None:
    if case is None or broker not in case["brokers"]:
        return None
    value = case["brokers"][broker]["median"].get(key)
    return None if value is None else float(value)


def all_clean(case: CaseResult, broker: str) -> bool:
    result = case["brokers"].get(broker)
    return bool(result and result["runs"] and result["clean_runs"] == len(result["runs"]))


def _status(ok: bool, clean: bool = True) -> str:
    return MET if ok and clean else NOT_MET


def _ratio_target(
    case: CaseResult | None,
    name: str,
    label: str,
    key: str,
    other: str,
    judge: Callable[[float], bool],
    need_clean: bool = True,
) -> Target:
    mine, theirs = median(case, "raftmq", key), median(case, other, key)
    if case is None or mine is None or theirs is None or not mine or not theirs:
        return Target(label, f"{name}: not measured", NOT_MEASURED)
    clean = not need_clean or all_clean(case, "raftmq")
    if key in LOWER_IS_BETTER:
        ratio = theirs / mine
        measured = f"{name}: {other}'s is {ratio:.2f}x raftmq's"
    else:
        ratio = mine / theirs
        measured = f"{name}: {ratio:.2f}x"
    if not clean:
        measured += " (raftmq runs not clean)"
    if case["brokers"][other].get("reduced"):
        measured += f" ({other} at reduced size)"
    return Target(label, measured, _status(judge(ratio), clean))


def evaluate(results: Results) -> list[Target]:
    cases = {c["name"]: c for c in results["cases"]}
    found: list[Target] = []
    for name in MOSQUITTO_RATIO_CASES:
        found.append(
            _ratio_target(
                cases.get(name),
                name,
                f">= {MIN_VS_MOSQUITTO}x Mosquitto msgs/s",
                "msgs_per_s",
                "mosquitto",
                lambda r: r >= MIN_VS_MOSQUITTO,
            )
        )
    for case in results["cases"]:
        found.append(
            _ratio_target(
                case,
                case["name"],
                f">= {MIN_VS_AMQTT:g}x amqtt ({_headline_label(case['headline'])})",
                case["headline"],
                "amqtt",
                lambda r: r >= MIN_VS_AMQTT,
                need_clean=case["scenario"] not in ("conns", "connect-rate"),
            )
        )
    found.append(
        _at_most_target(
            cases.get("latency"),
            f"latency p99 <= {MAX_LATENCY_VS_MOSQUITTO:g}x Mosquitto's",
            "latency_ms.p99",
            "ms",
            MAX_LATENCY_VS_MOSQUITTO,
        )
    )
    conns = cases.get("conns")
    title = conns["title"] if conns else "conns"
    found.append(
        _at_most_target(
            conns,
            f"conns {title}: opened in <= {MAX_CONNS_TIME_VS_MOSQUITTO:g}x Mosquitto's time",
            "elapsed_s",
            "s",
            MAX_CONNS_TIME_VS_MOSQUITTO,
        )
    )
    found.append(_rss_target(conns, title))
    found.append(_no_loss_target(results["cases"]))
    return found


def _headline_label(key: str) -> str:
    return {
        "msgs_per_s": "msgs/s",
        "latency_ms.p99": "p99 latency",
        "conns_per_s": "connections/s",
        "cycles_per_s": "connects/s",
    }.get(key, key)


def _at_most_target(
    case: CaseResult | None, label: str, key: str, unit: str, limit: float
) -> Target:
    """raftmq's figure at most ``limit`` times Mosquitto's (lower is better)."""
    mine, theirs = median(case, "raftmq", key), median(case, "mosquitto", key)
    if case is None or mine is None or not theirs:
        return Target(label, "not measured", NOT_MEASURED)
    ratio = mine / theirs
    clean = all_clean(case, "raftmq")
    measured = f"raftmq {mine:,.2f} {unit}, Mosquitto {theirs:,.2f} {unit}: {ratio:.2f}x"
    if not clean:
        measured += " (raftmq runs not clean)"
    return Target(label, measured, _status(ratio <= limit, clean))


def _rss_target(case: CaseResult | None, title: str) -> Target:
    label = f"conns {title}: raftmq RSS per connection <= {MAX_RSS_PER_CONN:,} B (8 KiB)"
    rss = median(case, "raftmq", "broker_rss_per_conn")
    if rss is None:
        return Target(label, "not measured", NOT_MEASURED)
    theirs = median(case, "mosquitto", "broker_rss_per_conn")
    vs = f" (Mosquitto {theirs:,.0f} B)" if theirs is not None else ""
    return Target(label, f"{rss:,.0f} B{vs}", _status(rss <= MAX_RSS_PER_CONN))


def _no_loss_target(cases: list[CaseResult]) -> Target:
    label = "no message lost where Mosquitto loses none"
    checked, lossy = 0, []
    for case in cases:
        if case["scenario"] in ("conns", "connect-rate"):
            continue
        mosquitto, raftmq = case["brokers"].get("mosquitto"), case["brokers"].get("raftmq")
        if not mosquitto or not raftmq or not all_clean(case, "mosquitto"):
            continue
        checked += 1
        if raftmq["lost"] or not raftmq["runs"] or any(r["report"] is None for r in raftmq["runs"]):
            lossy.append(f"{case['name']} ({raftmq['lost']:,} lost)")
    if not checked:
        return Target(label, "not measured", NOT_MEASURED)
    if lossy:
        return Target(label, f"lost in {len(lossy)} of {checked}: " + ", ".join(lossy), NOT_MET)
    return Target(label, f"none lost in {checked} of {checked} scenarios", MET)
