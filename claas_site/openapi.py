"""OpenAPI schema: the error format and the answers any operation may give, documented once."""
from __future__ import annotations

from typing import Any

ERROR_COMPONENT = "Error"
ERROR_SCHEMA = {
    "type": "object",
    "description": "Every 4xx answer: one clear sentence and, for invalid input, the fields at fault.",
    "properties": {"error": {"type": "string"}, "details": {"type": "object", "additionalProperties": {}}},
    "required": ["error", "details"],
}
WRITE_METHODS = {"post", "put", "patch", "delete"}
# (status, when it applies, description)
COMMON = (
    ("401", "always", "No valid token or session."),
    ("429", "write", "Too many writes (throttled) or a quota reached; the sentence says which and when to retry."),
    ("413", "body", "The request body is larger than the upload limit."),
    ("415", "body", "The body's content type is not one this operation reads."),
)


def _applies(when: str, method: str, operation: dict[str, Any]) -> bool:
    return (when == "always" or (when == "write" and method in WRITE_METHODS)
            or (when == "body" and "requestBody" in operation))


def error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular post-processing hook: each 4xx gets the error body; common answers are listed."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = ERROR_SCHEMA
    content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}}}
    for path, operations in result.get("paths", {}).items():
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses = operation["responses"]
            public_operation = {} in operation.get("security", [{}])
            for status, when, description in COMMON:
                if status == "401" and public_operation:
                    continue
                if _applies(when, method, operation) and status not in responses:
                    responses[status] = {"description": description}
            for status, response in responses.items():
                if str(status).startswith("4") and "content" not in response:
                    response["content"] = content
    return result
