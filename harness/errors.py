"""Every error the harness raises, under one root.

"You asked for something wrong" (InvalidArgument), "this machine cannot do
it" (Unsupported), "the world broke while we built or broke it" (SetupError,
FaultError), "what you waited for did not happen" (ObservationTimeout) and
"we could not put things back" (CleanupError) are different classes, because
a test reacts to each differently.  The foreign exception that caused one
rides in ``__cause__``.
"""

from __future__ import annotations

import errno as _errno


class HarnessError(Exception):
    """Root of the harness's errors.

    Carries where it happened when known: the namespace (``netns``), the
    command or netlink call (``call``) and the errno name (``errno``).
    """

    def __init__(self, message: str, *, netns: str | None = None,
                 call: str | None = None, errno: int | str | None = None):
        if isinstance(errno, int):
            errno = _errno.errorcode.get(errno, str(errno))
        self.netns, self.call, self.errno = netns, call, errno
        where = [f"{k}={v}" for k, v in (("netns", netns), ("call", call), ("errno", errno)) if v]
        super().__init__(message + (f" [{', '.join(where)}]" if where else ""))


class InvalidArgument(HarnessError, ValueError):
    """A parameter is out of range or names something that does not exist.

    Raised before anything is touched, so nothing needs undoing.  The message
    says what was expected, what came, and where it came from.
    """


class Unsupported(HarnessError):
    """This machine lacks a feature the test needs (the plugin skips the test
    with this message, which names the missing feature)."""


class LabClosed(HarnessError):
    """You used an object (host, socket, process, peer, fault, capture) of a
    lab that has been closed.  Raised before anything is touched: a closed
    lab's namespaces may have been handed, same names and same fds, to the
    next lab, so nothing of the old one may reach them."""


class SetupError(HarnessError):
    """Building a lab, a host or a process failed in the kernel or the OS."""


class FaultError(HarnessError):
    """Injecting or undoing a fault failed."""


class CallFailed(HarnessError):
    """A socket call the test relied on (connect, accept) failed; ``outcome``
    holds its errno and timing.  Calls whose errno a test asserts return an
    Outcome instead of raising."""

    def __init__(self, message: str, outcome, **kw):
        self.outcome = outcome
        super().__init__(message, errno=outcome.errno, **kw)


class ObservationTimeout(HarnessError):
    """A ``wait_<condition>`` reached its deadline; ``last`` holds the last
    thing it observed, so the message can say what was there instead."""

    def __init__(self, message: str, last=None, **kw):
        self.last = last
        super().__init__(message, **kw)


class CleanupError(HarnessError):
    """One or more undo steps failed; ``failures`` lists them all."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__(f"{len(failures)} undo step(s) failed:\n  " + "\n  ".join(failures))


class LabTimeout(HarnessError):
    """The test ran past its deadline (ini ``harness_timeout`` or the marker
    ``@pytest.mark.harness_timeout(seconds)``): the lab's calls were
    cancelled and the lab torn down.  The message names the deadline and
    where it came from."""
