"""Drift detection: the alibi-detect boundary, CLaaS's fast paths, memory budget, preprocessing."""
