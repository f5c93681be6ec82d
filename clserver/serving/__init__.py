"""The web process's edge: the predict fast path, model caches, body limits (an ASGI middleware), pooled reads."""
