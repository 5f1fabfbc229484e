"""Domain errors shared by both roles.

Each maps to one gRPC status code in :mod:`coordinator.servicer`; the message always names
what is wrong (job, party, column, row) so a user can act on it.
"""


class HeflError(Exception):
    """Base class of every error hefl raises on purpose."""


class InvalidArgument(HeflError):
    """The request itself is malformed: bad data, wrong shape, undecodable ciphertext."""


class FailedPrecondition(HeflError):
    """The request is well formed but the job is not in a state that accepts it."""


class NotFound(HeflError):
    """The job or party named does not exist."""


class AlreadyExists(HeflError):
    """A party or job with that name is already registered."""


class ResourceExhausted(HeflError):
    """The request would exceed one of the server's limits; the message names the limit."""


class DeadlineExceeded(HeflError):
    """Something the job waited for did not happen in time; the message says what."""


class Busy(HeflError):
    """The caller's earlier request for the same thing is still being handled: retry shortly."""


class PermissionDenied(HeflError):
    """The caller sent something its role must not send (e.g. a secret key to the server)."""


class DataError(InvalidArgument):
    """A party's CSV is unusable; the message names the file, row and column."""


class ProtocolError(HeflError):
    """The other side broke the protocol (wrong task, wrong sizes); a bug or an attack."""
