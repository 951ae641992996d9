"""Domain errors, raised by domain code and mapped to gRPC status once, in the server's
error-mapping interceptor. Domain code never imports grpc to report a failure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field of a request: `field` is its path (`metadata.sha256`)."""

    field: str
    description: str


class DomainError(Exception):
    """Base class of every error that has a defined gRPC status."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(DomainError):
    """The request is malformed; `violations` name each bad field (google.rpc.BadRequest)."""

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations: list[FieldViolation] = list(violations or [])

    @classmethod
    def for_field(cls, field_path: str, description: str) -> InvalidArgument:
        """One-violation shortcut: `InvalidArgument.for_field("email", "is not an address")`."""
        return cls(f"{field_path}: {description}", [FieldViolation(field_path, description)])


class NotFound(DomainError):
    """The resource does not exist, or belongs to another clinic (never say which)."""


class AlreadyExists(DomainError):
    """The resource to create exists already."""


class PermissionDenied(DomainError):
    """The caller is known but not allowed to do this."""


class Unauthenticated(DomainError):
    """The caller could not be identified (no, bad or expired credentials)."""


class FailedPrecondition(DomainError):
    """The system is not in a state where the request can run (e.g. study already deleted)."""


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota (google.rpc.QuotaFailure.Violation): `subject` names what is
    limited (`clinics/clinic-a/pendingUploads`), `description` the limit and the usage."""

    subject: str
    description: str


class ResourceExhausted(DomainError):
    """A rate limit or quota was hit; `retry_after_s` says when to try again, `violations`
    which quotas (sent as a google.rpc.QuotaFailure detail)."""

    def __init__(
        self,
        message: str,
        retry_after_s: float | None = None,
        violations: list[QuotaViolation] | None = None,
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.violations: list[QuotaViolation] = list(violations or [])

    @classmethod
    def for_quota(cls, subject: str, description: str) -> ResourceExhausted:
        """One-quota shortcut: `ResourceExhausted.for_quota("studies/x/files", "at most 100")`."""
        return cls(
            f"quota exceeded: {subject}: {description}",
            violations=[QuotaViolation(subject, description)],
        )


class DataLoss(DomainError):
    """Stored data is missing or corrupt (an archived object gone or not matching its hash)."""


class DependencyUnavailable(DomainError):
    """A dependency (PostgreSQL, Redis, NATS, S3, model server, SMTP) cannot be reached.

    Maps to UNAVAILABLE so that clients retry; `dependency` names which one.
    """

    def __init__(self, dependency: str, detail: str = "") -> None:
        super().__init__(f"{dependency} is unavailable" + (f": {detail}" if detail else ""))
        self.dependency = dependency
        self.detail = detail
