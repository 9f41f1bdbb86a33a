"""The process's file descriptors, split between connections and the server's own files.

One policy for both: connections may take half of the soft limit, and never so many that fewer than
OWN_FILES_FLOOR descriptors remain (the connection guard in app/api/http_protocol.py refuses past
that); the server's own files (collections' SQLite database, WAL, shared memory and writer lock,
about FILES_PER_COLLECTION each; models, logs, the event loop's descriptors) have the rest, and a
collection is refused before it would take more. Without it the common default soft limit (1,024)
failed opaquely: new collections got 500s, and past that every new connection (accept's EMFILE)."""

from __future__ import annotations

import os
import resource

FILES_PER_COLLECTION = 6
CONNECTION_FLOOR = 64
OWN_FILES_FLOOR = 512
# The server's own descriptors that are not a collection's: models' and logs' files, pipes, epoll.
OWN_FILES_SLACK = 64
UNLIMITED_AS = 65_536  # an unlimited soft limit is budgeted as this many


def raise_soft_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (as servers commonly do); (soft, hard) after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):  # a container may forbid it: the old limit stays
            return soft, hard
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def soft_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return UNLIMITED_AS if soft == resource.RLIM_INFINITY else soft


def connection_budget(soft: int | None = None) -> int:
    """Connections the server holds at most: half the limit, leaving at least OWN_FILES_FLOOR
    descriptors for its own files; never fewer than CONNECTION_FLOOR."""
    limit = soft_limit() if soft is None else soft
    return max(CONNECTION_FLOOR, min(limit - OWN_FILES_FLOOR, limit // 2))


def own_files_budget() -> int:
    """Descriptors the server's own files may use: what connections do not get, less the slack."""
    limit = soft_limit()
    return limit - connection_budget(limit) - OWN_FILES_SLACK


def own_files_open() -> int | None:
    """Descriptors open that are not sockets, or None where the platform does not list them."""
    try:
        listed = os.listdir("/proc/self/fd")
    except OSError:
        return None
    own = 0
    for fd in listed:
        try:
            own += not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed since it was listed (the listing's own descriptor, for one)
            continue
    return own


def shortfall_for_collection(collections_open: int) -> str | None:
    """Why one more collection must not be opened now, or None. Counting descriptors costs a system
    call each (a start-up opening thousands of collections would pay it thousands of times over):
    they are counted only once the collections alone could hold half the budget."""
    budget = own_files_budget()
    if (collections_open + 1) * FILES_PER_COLLECTION + OWN_FILES_SLACK <= budget // 2:
        return None
    own = own_files_open()
    if own is None or own + FILES_PER_COLLECTION <= budget:
        return None
    return (
        f"the server's own files would pass their share of its open-file limit ({own} open of {budget}; "
        f"each collection holds ~{FILES_PER_COLLECTION}, and the rest of the limit of {soft_limit()} is "
        "kept for connections): raise the open-file limit (ulimit -n, or the container's nofile) or "
        "delete unused collections"
    )
