"""Deployments: serving versions, ingest with drift checks, validated updates, rollback."""
