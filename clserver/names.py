"""Names users give their resources: one length and one pattern for every app."""

NAME_MAX_LENGTH = 100
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"
