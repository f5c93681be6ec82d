"""Benchmark results as data, and their rendering into bench/BENCHMARKS.md."""
from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

GPU_RECORD = Path(__file__).resolve().parent / "GPU.md"  # benchmark 2 on a GPU, recorded on a machine with one


@dataclass
class Target:
    """One target of the issue: what was measured, the figure, the goal and whether it was met."""

    what: str
    value: str
    goal: str
    met: bool | None  # None: not applicable in this run


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    number: int
    title: str
    setup: str = ""
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers for a table: floats to `digits` significant-looking places, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.1f}"
        if abs(value) >= 10:
            return f"{value:.2f}"
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def met_mark(met: bool | None) -> str:
    return {True: "**yes**", False: "**no**", None: "n/a"}[met]


def table_markdown(table: Table) -> str:
    lines = []
    if table.caption:
        lines += [table.caption, ""]
    lines.append("| " + " | ".join(table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(fmt(cell) for cell in row) + " |")
    return "\n".join(lines)


def _meminfo_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """What the figures were measured on (read, never remembered)."""
    import torch

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _meminfo_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(v, 2) for v in load] if load else None,
    }


def document(*, sections: list[Section], info: dict[str, Any], command: str, started: datetime,
             elapsed_s: float, quick: bool) -> str:
    """The whole BENCHMARKS.md: how it was run, a summary of targets, then one part per benchmark."""
    mem = info.get("memory_gib")
    out = [
        "# CLaaS benchmarks",
        "",
        "Every figure below comes from one run of the command shown, on the machine shown; each benchmark "
        "compares its contenders side by side in that run (ratios), never against remembered numbers. "
        "Benchmarks are not tests: the test suite asserts no timings.",
        "",
        f"- **Command:** `{command}`" + (" (quick smoke version: small sizes, figures are indicative only)"
                                        if quick else ""),
        f"- **Date:** {started.astimezone(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} "
        f"(whole run {elapsed_s / 60:.1f} min)",
        f"- **Machine:** {info['cpu']}, {info['cores']} cores, "
        f"{f'{mem:.1f} GiB' if mem else 'unknown'} memory, {info['os']}",
        f"- **Software:** Python {info['python']}, torch {info['torch']} "
        f"({info['torch_threads']} intra-op thread{'' if info['torch_threads'] == 1 else 's'}"
        + (", set by OMP_NUM_THREADS for every process of the run)" if os.environ.get("OMP_NUM_THREADS")
           else " by default)")
        + (f", GPU {info['cuda']}" if info.get("cuda") else ", no GPU"),
    ]
    if info.get("load_average_start") is not None:
        out.append(f"- **Load average** (1, 5, 15 min) at the start: {info['load_average_start']}, "
                   f"at the end: {info.get('load_average_end')} — figures from a busy machine are noisy.")
    out += ["", "## Targets", ""]
    rows = [[f"{s.number}. {s.title}", t.what, t.value, t.goal, met_mark(t.met)]
            for s in sections for t in s.targets]
    rows += [[f"{s.number}. {s.title}", "—", f"failed: {s.error}", "—", "**no**"] for s in sections if s.error]
    out.append(table_markdown(Table(["benchmark", "measure", "result", "target", "met"], rows)))
    for section in sections:
        out += ["", f"## {section.number}. {section.title}", ""]
        if section.setup:
            out += [section.setup, ""]
        if section.error:
            out += [f"**The benchmark failed:** {section.error}", ""]
        for table in section.tables:
            out += [table_markdown(table), ""]
        if section.targets:
            out.append(table_markdown(Table(["measure", "result", "target", "met"],
                                            [[t.what, t.value, t.goal, met_mark(t.met)] for t in section.targets])))
            out.append("")
        for note in section.notes:
            out.append(f"- {note}")
        if section.notes:
            out.append("")
        out.append(f"_Benchmark time: {section.elapsed_s:.0f} s._")
    if GPU_RECORD.exists():
        out += ["", "## Benchmark 2 on a GPU", "",
                f"Recorded separately on a machine with CUDA (its figures are in `{GPU_RECORD.name}`, written "
                "by `bench/gpu_overhead.py --out`), and copied here:", "",
                GPU_RECORD.read_text().strip()]
    elif not info.get("cuda"):
        out += ["", "## Benchmark 2 on a GPU", "",
                "Not run here: this machine has no GPU. On a machine with CUDA, "
                "`.venv/bin/python -m bench.gpu_overhead` runs benchmark 2 with `simple_cnn` on a CIFAR-shaped "
                "synthetic stream and `device: cuda` (service, plain Avalanche script and raw PyTorch side by "
                "side) and prints its table with the card's name; `--device cpu --quick` runs the same script "
                "small on a CPU."]
    out.append("")
    return "\n".join(out)


def command_line() -> str:
    argv = sys.argv[1:]
    return " ".join([".venv/bin/python -m bench", *argv]) if argv else ".venv/bin/python -m bench"
