"""Figures, targets and the machine they ran on: one table on stdout, one JSON file per run.

Every target is a ratio against a baseline of the same run or an absolute bound the issue
sets; a miss is reported, never raised, because a benchmark is not a test with a time limit.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median(values: Sequence[float]) -> float:
    """Median; 0 for no values so a failed run still prints a table."""
    return statistics.median(values) if values else 0.0


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile: a value that was actually measured, no interpolation."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def machine() -> dict[str, object]:
    """What the figures ran on; the load average shows how shared the machine was."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


@dataclass
class Check:
    """One target: ``value`` compared with ``target`` (``<=`` or ``>=``)."""

    name: str
    value: float
    target: float
    op: Literal["<=", ">="]
    unit: str = ""

    @property
    def passed(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target


@dataclass
class Report:
    """Everything one benchmark measured: rows of figures, checks against targets, notes."""

    name: str
    quick: bool
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    elapsed_seconds: float = 0.0

    def row(self, label: str, **figures: float) -> None:
        """Add (or extend) one row of the table."""
        self.rows.setdefault(label, {}).update(figures)

    def check(
        self, name: str, value: float, target: float, op: Literal["<=", ">="], unit: str = ""
    ) -> None:
        self.checks.append(Check(name, value, target, op, unit))

    def render(self) -> str:
        """The table a person reads: rows of figures, then every check with pass/MISS."""
        lines = [f"== {self.name}{' (quick)' if self.quick else ''}"]
        for label, figures in self.rows.items():
            cells = "  ".join(f"{key}={_fmt(value)}" for key, value in figures.items())
            lines.append(f"  {label:<28} {cells}")
        for check in self.checks:
            verdict = "ok  " if check.passed else "MISS"
            lines.append(
                f"  [{verdict}] {check.name:<40} {_fmt(check.value)}{check.unit} "
                f"(target {check.op} {_fmt(check.target)}{check.unit})"
            )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "quick": self.quick,
            "started_at": self.started_at,
            "elapsed_seconds": self.elapsed_seconds,
            "machine": machine(),
            "rows": self.rows,
            "checks": [{**asdict(check), "passed": check.passed} for check in self.checks],
            "notes": self.notes,
        }

    def write(self, directory: Path = RESULTS_DIR) -> Path:
        """Write ``<directory>/<name>[-quick].json`` and return its path."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.name}{'-quick' if self.quick else ''}.json"
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path


def _fmt(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value)}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}"
