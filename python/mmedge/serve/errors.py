"""The server's errors, as OpenAI's API reports them: an HTTP status and a JSON body
`{"error": {"message", "type", "param", "code"}}`, never a stack trace.

`ApiError` is raised anywhere in mmedge.serve for a request that cannot be served; `error_body`
shapes one for the wire. What the runtime raises (`mmedge.errors`) is turned into an ApiError by
`from_runtime`: an image that is not one, a prompt that does not fit, a busy model.
"""

from __future__ import annotations

from typing import Any

from mmedge.errors import BusyError, ImageError, MMEdgeError, PromptError

__all__ = ["ApiError", "error_body", "from_runtime"]

# OpenAI's `error.type` for each status this server answers with.
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 408: "timeout_error", 413: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error", 504: "timeout_error"}


class ApiError(Exception):
    """A request the server refuses: `status`, a message that says what to do, and OpenAI's
    `param` (the request field at fault) and `code` where one applies."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def from_runtime(error: MMEdgeError, param: str | None = None) -> ApiError:
    """The ApiError for an error the runtime raised while taking a request apart."""
    if isinstance(error, BusyError):
        return ApiError(429, str(error), code="busy", headers={"Retry-After": "1"})
    if isinstance(error, ImageError):
        return ApiError(400, str(error), param=param or "messages", code="invalid_image")
    if isinstance(error, PromptError) and "context holds" in str(error):
        return ApiError(400, str(error), param="messages", code="context_length_exceeded")
    return ApiError(400, str(error), param=param)
