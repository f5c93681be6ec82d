"""Web GUI: templates, static files and page views (no business logic)."""
