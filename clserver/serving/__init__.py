"""The web process's edge: the predict fast path, model caches, body limits, daphne hooks."""
