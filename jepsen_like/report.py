"""Checking a run's history and reporting it: per-workload verdicts, the
smallest window of operations that shows a failure, fault windows, the plots
(``latency.png``, ``rate.png``, faults shaded) and the one-line verdict.

A harness history mixes workloads; every client event names its ``workload``.
``check_run`` splits the history by workload (nemesis events go to each part)
and runs that workload's checkers (``jepsen_like.checker.WORKLOADS``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jepsen_like.checker import WORKLOADS, check_history, combine_verdicts
from jepsen_like.checker.history import Event, HistoryError, Operation, pair_operations

log = logging.getLogger(__name__)

WINDOW_OPS_MAX = 12
NS_PER_S = 1e9


def workloads_in(events: Sequence[Event]) -> list[str]:
    seen: list[str] = []
    for event in events:
        name = event.extra.get("workload")
        if isinstance(name, str) and name not in seen:
            seen.append(name)
    return seen


def split_by_workload(events: Sequence[Event]) -> dict[str, list[Event]]:
    """A completion without a ``workload`` goes with its process's invoke."""
    parts: dict[str, list[Event]] = {name: [] for name in workloads_in(events)}
    of_process: dict[Any, str] = {}
    for event in events:
        if event.is_nemesis:
            for part in parts.values():
                part.append(event)
            continue
        name = event.extra.get("workload")
        if not isinstance(name, str):
            name = of_process.get(event.process)
        elif event.type == "invoke":
            of_process[event.process] = name
        if isinstance(name, str):
            parts[name].append(event)
    return parts


def _set_failure_window(events: Sequence[Event], result: dict[str, Any]) -> list[dict[str, Any]]:
    """For a lost (or phantom / failed-but-present) element: its add, and the
    first read that contradicts it."""
    ops = pair_operations(events, keep_failed=True)
    adds = {op.value: op for op in ops if op.f == "add"}
    reads = [op for op in ops if op.f == "read" and op.status == "ok"]
    window: list[dict[str, Any]] = []
    for element in result.get("lost", [])[:3]:
        add = adds.get(element)
        if add is None or add.ret is None:
            continue
        missing_from = next(
            (r for r in reads if r.call > add.ret and isinstance(r.output, list) and element not in r.output), None
        )
        window.append({"role": "lost-add", "element": element, **_brief(add)})
        if missing_from is not None:
            window.append({"role": "read-without-it", "element": element, **_brief(missing_from, values=False)})
    for kind in ("phantom", "failed_present"):
        for element in result.get(kind, [])[:3]:
            read = next((r for r in reads if isinstance(r.output, list) and element in r.output), None)
            add = adds.get(element)
            if add is not None:
                window.append({"role": f"{kind}-add", "element": element, **_brief(add)})
            if read is not None:
                window.append({"role": f"{kind}-read", "element": element, **_brief(read, values=False)})
    return window[:WINDOW_OPS_MAX]


def _brief(op: Operation, values: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "process": op.process, "f": op.f, "key": op.key, "status": op.status,
        "node": op.complete.node if op.complete is not None else op.invoke.node,
        "invoke_index": op.invoke.index,
        "complete_index": op.complete.index if op.complete is not None else None,
    }
    if values:
        out["value"] = op.value
        out["output"] = op.output
    elif isinstance(op.output, list):
        out["output_size"] = len(op.output)
    return out


def failure_windows(parts: dict[str, list[Event]], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The smallest window of operations that shows each failure, per checker."""
    windows = []
    for workload, result in results.items():
        for name, checker in result.get("checkers", {}).items():
            if checker.get("valid") is not False:
                continue
            entry: dict[str, Any] = {"workload": workload, "checker": name}
            if name.startswith("linear"):
                entry.update(key=checker.get("key"), explanation=checker.get("explanation"),
                             window=checker.get("failure_window", []))
            elif name == "set":
                entry["window"] = _set_failure_window(parts[workload], checker)
            elif name == "session":
                entry["window"] = checker.get("anomalies", [])[:WINDOW_OPS_MAX]
            else:
                entry["window"] = checker.get("violations", [])[:WINDOW_OPS_MAX]
            windows.append(entry)
    return windows


def check_run(events: Sequence[Event], workloads: Sequence[str] | None = None,
              deadline_s: float | None = 60.0) -> dict[str, Any]:
    """Check every workload of a harness history. ``valid`` folds all verdicts
    (False beats "unknown" beats True)."""
    parts = split_by_workload(events)
    names = list(workloads) if workloads is not None else list(parts)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        part = parts.get(name, [])
        if name not in WORKLOADS:
            raise ValueError(f"no checkers for workload {name!r}")
        try:
            results[name] = check_history(part, name, deadline_s)
        except HistoryError as exc:
            results[name] = {"valid": "unknown", "workload": name, "events": len(part),
                             "error": f"history error: {exc}", "checkers": {}}
    return {
        "valid": combine_verdicts([r["valid"] for r in results.values()]) if results else "unknown",
        "workloads": results,
        "failures": failure_windows(parts, results),
    }


def fault_windows(events: Sequence[Event]) -> list[dict[str, Any]]:
    """Nemesis start/stop pairs as [start_s, stop_s] from the first event; a
    fault never stopped ends at the last event."""
    if not events:
        return []
    t0, t_end = events[0].time, events[-1].time
    opened: dict[Any, tuple[Event, dict[str, Any]]] = {}
    windows: list[dict[str, Any]] = []
    for event in events:
        if not event.is_nemesis or not isinstance(event.value, dict):
            continue
        fid = event.value.get("id")
        if event.f == "start":
            opened[fid] = (event, event.value)
        elif event.f == "stop" and fid in opened:
            start, value = opened.pop(fid)
            windows.append(_window(value, start.time, event.time, t0))
    for start, value in opened.values():
        windows.append(_window(value, start.time, t_end, t0))
    windows.sort(key=lambda w: w["start_s"])
    return windows


def _window(value: dict[str, Any], start_ns: int, stop_ns: int, t0: int) -> dict[str, Any]:
    label = value.get("fault", "?")
    if value.get("kind"):
        label += f" {value['kind']}"
    if value.get("nodes"):
        label += " " + ",".join(value["nodes"])
    return {
        "fault": value.get("fault"), "id": value.get("id"), "label": label,
        "start_s": round((start_ns - t0) / NS_PER_S, 3), "stop_s": round((stop_ns - t0) / NS_PER_S, 3),
        "detail": value,
    }


def op_stats(events: Sequence[Event]) -> dict[str, Any]:
    counts: dict[str, dict[str, int]] = {}
    for event in events:
        if event.is_nemesis or event.type == "invoke":
            continue
        name = str(event.extra.get("workload", "?"))
        counts.setdefault(name, {"ok": 0, "fail": 0, "info": 0})
        counts[name][event.type] += 1
    return counts


# -- plots -------------------------------------------------------------------------------
def _shade(ax: Any, windows: list[dict[str, Any]]) -> None:
    colours = {"isolate": "tab:red", "halves": "tab:red", "majority-ring": "tab:red", "bridge": "tab:red",
               "kill": "tab:purple", "pause": "tab:orange", "clock": "tab:cyan", "disk-full": "tab:brown",
               "power-loss": "black"}
    labelled: set[str] = set()
    for w in windows:
        fault = w.get("fault") or "?"
        label = fault if fault not in labelled else None
        labelled.add(fault)
        ax.axvspan(w["start_s"], w["stop_s"], color=colours.get(fault, "grey"), alpha=0.15, label=label, lw=0)


def plot(events: Sequence[Event], out_dir: Path, title: str) -> list[str]:
    """Write latency.png and rate.png; returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not events:
        return []
    t0 = events[0].time
    windows = fault_windows(events)
    pending: dict[Any, Event] = {}
    points: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    buckets: dict[str, dict[int, int]] = {"ok": {}, "fail": {}, "info": {}}
    for event in sorted(events, key=lambda e: e.index):
        if event.is_nemesis:
            continue
        if event.type == "invoke":
            pending[event.process] = event
            continue
        inv = pending.pop(event.process, None)
        if inv is None:
            continue
        start_s = (inv.time - t0) / NS_PER_S
        latency_ms = max((event.time - inv.time) / 1e6, 0.01)
        xs, ys = points.setdefault((event.f, event.type), ([], []))
        xs.append(start_s)
        ys.append(latency_ms)
        second = int((event.time - t0) / NS_PER_S)
        buckets[event.type][second] = buckets[event.type].get(second, 0) + 1
    written = []

    fig, ax = plt.subplots(figsize=(12, 5))
    _shade(ax, windows)
    markers = {"ok": ".", "fail": "x", "info": "^"}
    for (f, etype), (xs, ys) in sorted(points.items()):
        ax.scatter(xs, ys, s=4 if etype == "ok" else 14, marker=markers.get(etype, "."), alpha=0.5,
                   label=f"{f} {etype}")
    ax.set_yscale("log")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{title}: latency per operation (faults shaded)")
    ax.legend(loc="upper left", fontsize="small", markerscale=2, ncol=4)
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))

    fig, ax = plt.subplots(figsize=(12, 4))
    _shade(ax, windows)
    end = max((max(b) for b in buckets.values() if b), default=0) + 1
    for etype, colour in (("ok", "tab:green"), ("fail", "tab:red"), ("info", "tab:orange")):
        series = [buckets[etype].get(s, 0) for s in range(end)]
        ax.plot(range(end), series, color=colour, label=etype, drawstyle="steps-post")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("completions per second")
    ax.set_title(f"{title}: throughput (faults shaded)")
    ax.legend(loc="upper left", fontsize="small", ncol=4)
    fig.tight_layout()
    path = out_dir / "rate.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(str(path))
    return written


# -- the one line ----------------------------------------------------------------------
def verdict_word(valid: Any) -> str:
    return "VALID" if valid is True else ("INVALID" if valid is False else "UNKNOWN")


def ops_checked(workload_result: dict[str, Any]) -> int:
    """Completed operations a workload's checkers looked at."""
    best = 0
    for name, checker in workload_result.get("checkers", {}).items():
        if name.startswith("linear"):
            best = max(best, int(checker.get("ops_checked", 0)))
        elif name == "set":
            best = max(best, int(checker.get("adds_attempted", 0)) + int(checker.get("reads", 0)))
        elif name == "session":
            best = max(best, int(checker.get("reads_checked", 0)) + int(checker.get("writes_checked", 0)))
        elif name in ("stale", "causal", "search"):
            best = max(best, int(checker.get("reads_checked", 0)))
        else:
            best = max(best, int(checker.get("ops_checked", 0)))
    return best


def summary(workload: str, result: dict[str, Any]) -> str:
    parts = []
    for name, checker in result.get("checkers", {}).items():
        valid = checker.get("valid")
        if name.startswith("linear"):
            extra = f"ops={checker.get('ops_checked')}"
            if valid is False:
                extra += f" key={checker.get('key')}"
            elif valid is not True:
                extra += f" {checker.get('reason')}"
        elif name == "set":
            extra = (f"lost={checker.get('lost_count')} phantom={checker.get('phantom_count')} "
                     f"failed-present={checker.get('failed_present_count')} reads={checker.get('reads')}")
        elif name == "session":
            extra = " ".join(f"{k}={v}" for k, v in checker.get("anomaly_counts", {}).items())
            extra += f" reads={checker.get('reads_checked')}"
        else:
            extra = f"violations={checker.get('violation_count')} reads={checker.get('reads_checked')}"
        parts.append(f"{name}={valid}({extra})")
    if result.get("error"):
        parts.append(str(result["error"])[:120])
    return f"{workload}[{' '.join(parts)}]"
