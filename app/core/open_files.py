"""The process's open-file budget. Each collection holds about FILES_PER_COLLECTION files open (its
SQLite database, WAL and shared memory, a reader's connection, the writer lock), and the soft limit
many systems start a process with (1,024) would otherwise cap a server at ~200 collections, then
fail opaquely: new collections, and past that every new connection (accept gets EMFILE)."""

from __future__ import annotations

import os
import resource

FILES_PER_COLLECTION = 6
# Kept free for connections, model files and logs: a collection is refused before it takes these.
MIN_RESERVE = 64


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


def open_count() -> int | None:
    """Files this process has open, or None where the platform does not say."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(listing))
        except OSError:
            continue
    return None


def soft_limit() -> int | None:
    """The files this process may open, or None for no limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else soft


def shortfall_for_collection() -> str | None:
    """Why one more collection must not be opened now (the reserve would be gone), or None."""
    soft, used = soft_limit(), open_count()
    if used is None or soft is None:
        return None
    reserve = max(MIN_RESERVE, soft // 8)
    if used + FILES_PER_COLLECTION + reserve <= soft:
        return None
    return (
        f"the server has {used} files open of its limit of {soft} (each collection holds ~{FILES_PER_COLLECTION}, "
        f"and {reserve} stay free for connections): raise the open-file limit (ulimit -n, or the "
        "container's nofile) or delete unused collections"
    )
