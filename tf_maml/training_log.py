"""A run's ``training_log.csv`` read as its history: the sessions it trained in, the training
time with pauses left out, the speed, and the stretches of training with the processor each
ran on.

A session is the training between two restarts: the log's ``seconds`` column restarts from
zero each time training resumes. The zoo records each session as a *stretch* (first and last
iteration, iterations per second, the processor, its vector ISA and cores), because a run
that outlasts one machine resumes on another, and a speed means nothing without the
processor it was measured on.
"""

from __future__ import annotations

import os
import re

# A log interval this many times slower per iteration than its session's median was a pause
# (the process stopped, or the machine suspended or was taken by other work), not the speed
# training runs at.
PAUSE_FACTOR = 5.0

NOT_RECORDED = "not recorded"
_ISA = re.compile(r"^(AVX|AMX|SSE|NEON|SVE)")


def read_training_log(directory: str) -> list[dict]:
    """Rows of ``directory/training_log.csv`` as dicts (unparseable rows skipped)."""
    path = os.path.join(directory, "training_log.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        header = next(f, "").strip().split(",")
        rows = []
        for line in f:
            parts = line.rstrip("\n").split(",")
            if len(parts) == len(header):
                rows.append(dict(zip(header, parts)))
    return rows


def sessions(rows: list[dict]) -> list[list[tuple[int, float]]]:
    """(iteration, seconds) per session: ``seconds`` restarts from zero when a run resumes."""
    out: list[list[tuple[int, float]]] = []
    last = None
    for row in rows:
        try:
            point = (int(row["iteration"]), float(row["seconds"]))
        except (KeyError, ValueError):
            continue
        if last is None or point[1] < last:
            out.append([])
        out[-1].append(point)
        last = point[1]
    return out


def _intervals(session: list[tuple[int, float]]) -> tuple[list[tuple[int, float]], float]:
    """The session's (iterations, seconds) between logged rows, a validation row's time going
    to the next interval, and the median seconds per iteration (0 without intervals)."""
    intervals, carried = [], 0.0
    for (a, ta), (b, tb) in zip(session, session[1:]):
        if b > a:
            intervals.append((b - a, tb - ta + carried))
            carried = 0.0
        else:
            carried += tb - ta
    per_iteration = sorted(dt / di for di, dt in intervals)
    return intervals, per_iteration[len(per_iteration) // 2] if per_iteration else 0.0


def _paused(interval: tuple[int, float], median: float) -> bool:
    return interval[1] / interval[0] > PAUSE_FACTOR * median


def session_speed(session: list[tuple[int, float]]) -> float | None:
    """Iterations per second between the session's logged rows, its pauses left out (None
    with no interval to measure)."""
    intervals, median = _intervals(session)
    kept = [(di, dt) for di, dt in intervals if not _paused((di, dt), median)]
    seconds = sum(dt for _, dt in kept)
    return sum(di for di, _ in kept) / seconds if seconds > 0 else None


def training_seconds(rows: list[dict]) -> float | None:
    """Training time summed over the sessions of a run, pauses left out: an interval between
    logged rows more than :data:`PAUSE_FACTOR` times slower per iteration than its session's
    median counts at the median; the time to a session's first row (start-up) counts as it
    is."""
    parts = sessions(rows)
    if not parts:
        return None
    total = 0.0
    for session in parts:
        intervals, median = _intervals(session)
        total += session[0][1] + sum(di * median if _paused((di, dt), median) else dt
                                     for di, dt in intervals)
    return total


def last_speed(rows: list[dict]) -> float | None:
    """Iterations per second of the last session that ran long enough to tell (pauses left
    out)."""
    for session in reversed(sessions(rows)):
        (i0, t0), (i1, t1) = session[0], session[-1]
        if i1 > i0 and t1 > t0 + 30:
            return session_speed(session)
    return None


# ---------------------------------------------------------------------------- stretches
def machine_fields(machine: str | None) -> dict:
    """``{"processor", "isa", "cores"}`` of a machine as ``tf-maml-reproduce`` records it
    (``"<processor>, <ISA>, <n> cores"``, the ISA when known); all None if not recorded."""
    fields = {"processor": None, "isa": None, "cores": None}
    if not machine:
        return fields
    parts = machine.split(", ")
    if len(parts) > 1 and re.fullmatch(r"\d+ cores?", parts[-1]):
        fields["cores"] = int(parts.pop().split()[0])
    if len(parts) > 1 and _ISA.match(parts[-1]):
        fields["isa"] = parts.pop()
    fields["processor"] = ", ".join(parts)
    return fields


def machine_text(stretch: dict) -> str:
    """The stretch's machine as recorded (``"<processor>, <ISA>, <n> cores"``)."""
    if not stretch.get("processor"):
        return NOT_RECORDED
    parts = [stretch["processor"]] + ([stretch["isa"]] if stretch.get("isa") else [])
    if stretch.get("cores"):
        parts.append(f"{stretch['cores']} cores")
    return ", ".join(parts)


def run_stretches(rows: list[dict], committed: int, run: dict,
                  machine: str | None = None) -> list[dict]:
    """Every stretch of the run whose log is ``rows`` and latest checkpoint ``committed``:
    from its first iteration (the previous session's last logged one, 0 for the first) to its
    last (the last session's: the checkpoint), its speed, and its processor. The processor is
    the one ``run["stretches"]`` recorded for a stretch starting there; else, for the last
    stretch, ``machine`` (the one publishing it: the machine that trained it); else the
    machine ``run["machines"]`` names if it names one alone (older records: every machine
    that trained); else not recorded."""
    recorded = {s.get("first"): s for s in run.get("stretches", [])}
    machines = run.get("machines", [])
    parts = sessions(rows)
    out, first = [], 0
    for k, session in enumerate(parts):
        last = session[-1][0] if k < len(parts) - 1 else max(session[-1][0], committed)
        speed = session_speed(session)
        stretch = {"first": first, "last": last,
                   "iterations_per_second": None if speed is None else round(speed, 3)}
        if first in recorded:
            held = recorded[first]
            stretch.update({key: held.get(key) for key in ("processor", "isa", "cores")})
        elif machine and k == len(parts) - 1:
            stretch.update(machine_fields(machine))
        else:
            stretch.update(machine_fields(machines[0] if len(machines) == 1 else None))
        out.append(stretch)
        first = session[-1][0]
    return out
