"""Experiments: setup, execution, results, events and their websocket (the base scenario)."""
