"""Uploaded datasets: safe parsing of NPZ, CSV, Parquet and image-folder zips, storage, listing."""
