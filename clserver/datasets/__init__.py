"""Uploaded datasets: safe parsing of NPZ and CSV, storage, listing."""
