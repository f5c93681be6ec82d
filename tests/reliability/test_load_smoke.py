"""A short version of bench/load.py: 10 clients for 5 s on status, results and predict, zero errors."""
from __future__ import annotations

from bench.load import ENDPOINTS, run


def test_status_results_and_predict_answer_every_request_while_a_job_trains(tmp_path):
    figures = run(workdir=tmp_path, clients=10, seconds=5, warmup=1)
    assert figures["errors"] == 0, figures["first_errors"]
    assert all(figures["endpoints"][name]["requests"] > 0 for name in ENDPOINTS), figures["endpoints"]
    # The job trained through the window and was cancelled after it.
    assert figures["training"]["status_after"] == "running" and figures["training"]["cancelled"]
