"""Domain errors, and the one table that maps them to HTTP.

Errors are raised where they happen (the registry, the batcher, a collection, a filter) and carry
no HTTP status: the service layer and everything below it know nothing of HTTP. `HTTP_ERRORS`
below is the only place a status is chosen (as text-embeddings-inference maps its error enum in
one place); `app/api/errors.py` turns an error into the JSON body
`{"error": {"message", "type", "code"}}` (the OpenAI shape). This module imports no web framework.
"""

from __future__ import annotations

from dataclasses import dataclass


class TesseraError(Exception):
    """Base of every error a request can cause; `code` is the machine-readable `error.code`.
    `retry_after`: seconds a client should wait, where the error says when to come back."""

    code = "invalid_request"

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class InvalidRequest(TesseraError):
    """The request is well-formed JSON but asks for something impossible."""


class InvalidDimensions(InvalidRequest):
    code = "invalid_dimensions"


class WrongDimension(InvalidRequest):
    code = "wrong_dimension"


class InvalidVector(InvalidRequest):
    code = "invalid_vector"


class DuplicateIds(InvalidRequest):
    code = "duplicate_ids"


class InvalidFilter(InvalidRequest):
    code = "invalid_filter"


class InvalidIndexSpec(InvalidRequest):
    code = "invalid_index_spec"


class InvalidIndexName(InvalidRequest):
    code = "invalid_index_name"


class KeywordSearchUnavailable(InvalidRequest):
    """`mode: keyword | hybrid` on a collection with no text, or on a read-only replica of a
    collection made before keyword indexes."""

    code = "keyword_search_unavailable"


class InvalidMetric(InvalidRequest):
    code = "invalid_metric"


class ModelNotFound(TesseraError):
    code = "model_not_found"


class WrongModelKind(TesseraError):
    """The model exists but cannot do what was asked (e.g. embedding with a reranker)."""

    code = "wrong_model_kind"


class UnsupportedInput(WrongModelKind):
    """An input of a modality the model does not embed (an image for a text model, or the reverse)."""

    code = "unsupported_input"


class TooManyInputs(TesseraError):
    code = "too_many_inputs"


class InputTooLong(TesseraError):
    """An input exceeds the model's limit and the caller asked not to truncate."""

    code = "input_too_long"

    def __init__(self, index: int, length: int, limit: int, message: str | None = None) -> None:
        super().__init__(
            message
            or f"input {index} has {length} tokens, more than the model's limit of {limit}; "
            "shorten it or send truncate=true"
        )
        self.index, self.length, self.limit = index, length, limit

    @classmethod
    def document(cls, index: int, length: int, limit: int) -> InputTooLong:
        """A reranked document over its room (the model's cap or the request's max_tokens_per_doc)."""
        return cls(
            index,
            length,
            limit,
            f"document {index} has {length} tokens, more than {limit}; "
            "shorten it, raise max_tokens_per_doc or send truncate=true",
        )


class InvalidImage(InvalidRequest):
    """Bytes that are not a decodable image in a supported format, bad base64, a wrong data-URI type."""

    code = "invalid_image"


class ImageTooLarge(TesseraError):
    """An image over the byte or decoded-pixel limit (checked from the header, before decoding)."""

    code = "image_too_large"


class ImageFetchRefused(InvalidRequest):
    """An image URL that is off, not http(s), resolves to a private address, or fails to fetch."""

    code = "image_url_refused"


class MissingApiKey(TesseraError):
    code = "missing_api_key"


class InvalidApiKey(TesseraError):
    code = "invalid_api_key"


class ReadOnlyKey(TesseraError):
    code = "read_only_key"


class RemoteCallerRefused(TesseraError):
    """A caller on another machine while the server has no API keys and is not told to serve open."""

    code = "unauthenticated_remote_caller"


class RateLimited(TesseraError):
    """A caller over its request rate (TESSERA_RATE_LIMIT_PER_S)."""

    code = "rate_limited"


class QueueFull(TesseraError):
    """More work is waiting than the queue admits; the client should back off and retry."""

    code = "queue_full"


class StorageFull(TesseraError):
    """The data volume has no room for a write (SQLite's "database or disk is full", ENOSPC,
    EDQUOT): nothing of the request was stored, reads go on, and writes work again once an
    operator frees space. A server-side state, not the client's error."""

    code = "storage_full"


class OpenFileLimit(TesseraError):
    """One more collection would use up the files the process may open (its open-file limit less a
    reserve for connections): refused before anything is opened, with what to change."""

    code = "open_file_limit"


class RescoreUnavailable(TesseraError):
    """A collection's second-stage (rescore) model is not served, or no longer matches its vectors:
    writes are refused (none may lack its second vector) and so is search with `rerank`; plain
    search still works."""

    code = "rescore_model_unavailable"


class CollectionNotFound(TesseraError):
    code = "index_not_found"


class DocumentNotFound(TesseraError):
    code = "document_not_found"


class CollectionExists(TesseraError):
    code = "index_exists"


class CollectionLocked(TesseraError):
    """Another process (a batch build, another server) is writing this collection."""

    code = "index_locked"


class ModelVersionChanged(TesseraError):
    """A collection's vectors come from another version of its model than the served one: embedding
    more documents into it would mix two embedding spaces."""

    code = "index_model_changed"


class OptimizeRunning(TesseraError):
    code = "optimize_running"


class ReadOnly(TesseraError):
    code = "read_only"


@dataclass(frozen=True)
class HttpMapping:
    status: int
    error_type: str = "invalid_request_error"
    retry_after: bool = False  # add Retry-After (clients back off instead of the queue growing)


# The one table: domain error -> HTTP status and OpenAI error type. Looked up along the class's MRO,
# so a subclass without its own row answers like its parent.
HTTP_ERRORS: dict[type[TesseraError], HttpMapping] = {
    TesseraError: HttpMapping(400),
    InvalidRequest: HttpMapping(422),
    WrongModelKind: HttpMapping(400),
    MissingApiKey: HttpMapping(401, "authentication_error"),
    InvalidApiKey: HttpMapping(401, "authentication_error"),
    ReadOnly: HttpMapping(403, "permission_error"),
    ReadOnlyKey: HttpMapping(403, "permission_error"),
    RemoteCallerRefused: HttpMapping(403, "permission_error"),
    ModelNotFound: HttpMapping(404),
    CollectionNotFound: HttpMapping(404),
    DocumentNotFound: HttpMapping(404),
    CollectionExists: HttpMapping(409),
    OptimizeRunning: HttpMapping(409),
    CollectionLocked: HttpMapping(409),
    ModelVersionChanged: HttpMapping(409),
    TooManyInputs: HttpMapping(413),
    InputTooLong: HttpMapping(413),
    ImageTooLarge: HttpMapping(413),
    QueueFull: HttpMapping(429, "rate_limit_error", retry_after=True),
    RescoreUnavailable: HttpMapping(503, "service_unavailable_error"),
    StorageFull: HttpMapping(507, "server_error"),
    OpenFileLimit: HttpMapping(507, "server_error"),
    RateLimited: HttpMapping(429, "rate_limit_error", retry_after=True),
}


def http_mapping(error: TesseraError) -> HttpMapping:
    for cls in type(error).__mro__:
        mapping = HTTP_ERRORS.get(cls)  # type: ignore[arg-type]
        if mapping is not None:
            return mapping
    return HTTP_ERRORS[TesseraError]
