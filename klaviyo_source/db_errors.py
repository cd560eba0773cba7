"""What went wrong in a database call, seen through dlt's wrappers.

PEP 249 sorts database errors by who can fix them: ``OperationalError`` is the database or the
way to it failing (server unreachable, file missing or read-only, disk full), ``ProgrammingError``
a wrong statement or name.  dlt wraps the first kind into ``DestinationConnectionError``, whose
text starts with a generic "check if you configured the credentials" and ends with the cause;
these helpers dig the cause out so a message can lead with it.
"""

from __future__ import annotations

from typing import Iterator


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it wraps: ``__cause__``, ``__context__``, dlt's ``exception``
    (``PipelineStepFailed``) and ``inner_exc`` (``DestinationConnectionError``).

    Args:
        exc: the exception caught.

    Returns:
        An iterator over the exception and every exception it wraps, outermost first.
    """
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (getattr(current, "exception", None), getattr(current, "inner_exc", None),
                    current.__cause__, current.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def is_unavailable(exc: BaseException) -> bool:
    """True when the database could not be reached or opened (PEP 249 ``OperationalError``, or
    dlt's ``DestinationConnectionError``), as opposed to a wrong query, table or configuration.

    Args:
        exc: the exception caught.

    Returns:
        Whether any exception in its chain is a connection/operation failure.
    """
    for item in exception_chain(exc):
        names = {cls.__name__ for cls in type(item).__mro__}
        if "DestinationConnectionError" in names or "OperationalError" in names:
            return True
    return False


def root_cause(exc: BaseException) -> BaseException:
    """The deepest exception of the chain not raised by dlt itself (the database's own error).

    Args:
        exc: the exception caught.

    Returns:
        That exception, or the deepest one when every exception in the chain is dlt's.
    """
    chain = list(exception_chain(exc))
    for item in reversed(chain):
        if type(item).__module__.split(".")[0] != "dlt":
            return item
    return chain[-1]


def describe(exc: BaseException) -> str:
    """The first non-empty line of the root cause's message (its class name when it has none).

    Args:
        exc: the exception caught.

    Returns:
        One line, at most 300 characters.
    """
    root = root_cause(exc)
    for line in str(root).strip().splitlines():
        if line.strip():
            return line.strip()[:300]
    return type(root).__name__
