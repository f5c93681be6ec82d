"""`python -m bench`: run the benchmarks side by side and write bench/BENCHMARKS.md (a full run ends
with the load run of `bench/load.py`, which adds its own section)."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

from bench import report
from bench.harness import ROOT, Context

BENCHMARKS = {
    1: ("update cost against retraining", "bench.update_cost"),
    2: ("service overhead", "bench.service_overhead"),
    3: ("drift-check latency", "bench.drift_latency"),
    4: ("serving against mlflow models serve", "bench.serving"),
    5: ("interference of an update with serving", "bench.interference"),
    6: ("start-up", "bench.startup"),
}
RECORD = ROOT / "bench" / "BENCHMARKS.md"
PARTIAL = ROOT / "var" / "bench" / "BENCHMARKS-partial.md"
# Sections other commands record between their markers (bench/load.py, bench/asgi_servers.py): a full
# run rewrites the file and keeps them, at the end (the load run then records its own again).
MARKED = re.compile(r"<!-- ([a-z-]+):start -->.*?<!-- \1:end -->\n?", re.DOTALL)


def marked_sections(path: Path) -> str:
    return "".join(m.group(0) for m in MARKED.finditer(path.read_text())) if path.exists() else ""


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="CLaaS benchmarks. A full run (all benchmarks, not --quick) rewrites bench/BENCHMARKS.md; "
                    f"--quick or --only write {PARTIAL.relative_to(ROOT)} instead (or --out).")
    parser.add_argument("--only", default="", help="comma-separated benchmark numbers, e.g. 2 or 4,5 ("
                        + "; ".join(f"{n}: {t}" for n, (t, _) in BENCHMARKS.items()) + ")")
    parser.add_argument("--quick", action="store_true", help="a short smoke version (small sizes, short loads)")
    parser.add_argument("--out", default="", help="where to write the Markdown report")
    parser.add_argument("--json", default="", help="also write every figure as JSON here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (data dirs, logs)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads in every process of the run, the service's included "
                             "(OMP_NUM_THREADS); default: torch's own choice")
    return parser.parse_args(argv)


def selected(only: str) -> list[int]:
    if not only:
        return list(BENCHMARKS)
    numbers = sorted({int(n) for n in only.replace(" ", "").split(",") if n})
    unknown = [n for n in numbers if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"No benchmark {unknown[0]}; choose from {', '.join(map(str, BENCHMARKS))}.")
    return numbers


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.threads:
        # Before torch is imported anywhere: this process, the service and the scripts all inherit it.
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)
    numbers = selected(args.only)
    full = not args.quick and numbers == list(BENCHMARKS)
    out = Path(args.out) if args.out else (RECORD if full else PARTIAL)
    workdir = Path(tempfile.mkdtemp(prefix="claas-bench-"))
    ctx = Context(workdir=workdir, quick=args.quick)
    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    load_start = [round(v, 2) for v in os.getloadavg()]
    ctx.say(f"benchmarks {', '.join(map(str, numbers))}{' (quick)' if args.quick else ''}; scratch {workdir}")
    sections: list[report.Section] = []
    try:
        for n in numbers:
            title, module = BENCHMARKS[n]
            ctx.current = f"{n}. "
            ctx.say(f"{title}: starting")
            began = time.perf_counter()
            try:
                section = importlib.import_module(module).run(ctx)
            except Exception as exc:  # one failed benchmark must not lose the others' figures
                traceback.print_exc()
                section = report.Section(n, title, error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                                         if str(exc) else type(exc).__name__)
            section.elapsed_s = time.perf_counter() - began
            sections.append(section)
            for target in section.targets:
                ctx.say(f"{target.what}: {target.value} (target {target.goal}): {report.met_mark(target.met)}")
            ctx.say(f"{title}: done in {section.elapsed_s:.0f} s")
            ctx.current = ""
    finally:
        ctx.stop()
        if args.keep:
            print(f"scratch kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    info = report.machine()
    info["load_average_start"] = load_start
    info["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    elapsed = time.perf_counter() - t0
    text = report.document(sections=sections, info=info, command=report.command_line(), started=started,
                           elapsed_s=elapsed, quick=args.quick)
    out.parent.mkdir(parents=True, exist_ok=True)
    if full and (kept := marked_sections(out)):
        text = text.rstrip("\n") + "\n\n" + kept
    out.write_text(text)
    if full:
        # The reliability load run (50 clients, 30 s) records its own section after the others.
        ctx.say("load: 50 clients for 30 s against status, results and predict while a job trains")
        from bench import load

        load.main([])
        elapsed = time.perf_counter() - t0
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "sections": [
            {"number": s.number, "title": s.title, "error": s.error, "elapsed_s": s.elapsed_s,
             "targets": [t.__dict__ for t in s.targets], "data": s.data} for s in sections]},
            indent=1, default=str))
    print(f"\nwrote {out} in {elapsed / 60:.1f} min")
    missed = [t for s in sections for t in s.targets if t.met is False]
    failed = [s for s in sections if s.error]
    print(f"{sum(len(s.targets) for s in sections)} targets: {len(missed)} missed; {len(failed)} benchmarks failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
