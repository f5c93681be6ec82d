"""Benchmark 6: the web process's start-up (time to the first 200 from /healthz) and resident memory."""
from __future__ import annotations

import statistics

from bench.harness import Context, rss_mb, web_start_timed
from bench.report import Section, Table, Target

TARGET_START_S = 10.0
TARGET_RSS_MB = 500.0
RESTARTS = 2  # beside the first start of the run


def run(ctx: Context) -> Section:
    live = ctx.service()
    starts = [dict(ctx.service_start or {})]
    for i in range(0 if ctx.quick else RESTARTS):
        ctx.say(f"restarting the web process ({i + 2}/{RESTARTS + 1})")
        live.stop_web()
        starts.append(web_start_timed(live))
    times = [s["to_healthy_s"] for s in starts]
    start_rss = [s["rss_mb"] for s in starts]
    live.user("bench")  # the token is kept in the database: the client of the run goes on working
    ctx.client().get("/api/deployments/")  # one authenticated request after the last restart
    rss_now = rss_mb(live.web.pid)
    after_load = ctx.shared.get("web_rss_after_load_mb")
    after_load_private = ctx.shared.get("web_uss_after_load_mb")
    mlflow = ctx.shared.get("mlflow_start")

    section = Section(6, "Start-up and memory of the web process")
    section.setup = (
        "the web process (uvicorn serving `claas_site.asgi:application`, as `./claas run` starts it) spawned on a migrated data dir; "
        "the time runs from the spawn to the first 200 answer of `/healthz` (polled every 20 ms; its checks "
        "reach the database, the job queue and the MLflow store). Resident memory (RSS) of the web process "
        f"right after it is healthy. {len(starts)} start(s): the first of the run, then restarts.")
    rows = [[i + 1, s["to_healthy_s"], s["rss_mb"]] for i, s in enumerate(starts)]
    section.tables.append(Table(["start", "to first /healthz 200 (s)", "RSS when healthy (MB)"], rows))
    extra = [["web process after one authenticated API request", rss_now]]
    if after_load is not None:
        extra.append(["web process after the serving benchmark (torch, the model and a drift detector loaded, "
                      "load served)", after_load])
    if after_load_private is not None:
        extra.append(["the same, private to the process (USS: without shared library pages)", after_load_private])
    if mlflow:
        extra.append(["for comparison: `mlflow models serve` when it first answered /ping "
                      f"({mlflow['to_ping_s']:.1f} s after its start)", mlflow["rss_mb"]])
    section.tables.append(Table(["resident memory", "MB"], extra))
    worst_start = max(times)
    section.targets = [
        Target("time to first /healthz 200 (median; worst)",
               f"{statistics.median(times):.2f} s; {worst_start:.2f} s", f"< {TARGET_START_S:.0f} s",
               worst_start < TARGET_START_S),
        Target("web process RSS when healthy (largest of the starts)", f"{max(start_rss):.0f} MB",
               f"< {TARGET_RSS_MB:.0f} MB", max(start_rss) < TARGET_RSS_MB),
    ]
    section.notes.append(
        "The web process imports neither torch, Avalanche nor alibi-detect at start-up; the first `predict` "
        "imports torch and the first drift check alibi-detect (with its own imports), and their shared "
        "libraries count in RSS from then on: `import torch` alone takes a Python process to about 700 MB RSS "
        "with this torch build (it maps its CUDA libraries even without a GPU), and alibi-detect's imports "
        "(pandas, pyarrow, numba among them) about 430 MB more; most of that is file-backed library pages that "
        "every process using them shares, hence the private (USS) figure. The target is the start-up one; "
        "the figures after serving are shown so that nobody sizes a machine by the start-up figure alone.")
    section.data = {"starts": starts, "rss_now_mb": rss_now, "rss_after_load_mb": after_load,
                    "uss_after_load_mb": after_load_private, "mlflow": mlflow}
    return section
