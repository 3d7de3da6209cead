"""One error hierarchy. Only the command-line entry points catch these and turn them into exit codes."""

from __future__ import annotations

import errno as errno_mod
import os


class IsobenchError(Exception):
    """Base of every error isobench raises on purpose."""

    exit_code = 1


class UserError(IsobenchError):
    """Bad input: the message names what is wrong and what would be accepted (exit 2)."""

    exit_code = 2


class EnvironmentError_(IsobenchError):
    """This machine cannot do what was asked (missing tool, no root, no cgroup controller): exit 3."""

    exit_code = 3


class NotApplicable(IsobenchError):
    """A platform cannot take one measurement (a VM has no NIC for a host peer): recorded, not a failure.

    The scheduler stores it with the sample as "NotApplicable: <why>"; the report
    lists such samples apart from failures.
    """

    exit_code = 3


class StateError(IsobenchError):
    """An illegal container lifecycle transition (start a stopped container, delete a running one)."""

    exit_code = 1


class ContainerError(IsobenchError):
    """The container could not be created or started; the runtime has cleaned up what it made."""

    exit_code = 1


class OSFailure(IsobenchError):
    """A system call failed: names the operation and the path, like runc's PathError."""

    exit_code = 1

    def __init__(self, op: str, path: str, err: int) -> None:
        self.op = op
        self.path = path
        self.errno = err
        detail = os.strerror(err) if err else "failed"
        super().__init__(f"{op} {path}: {detail}" if path else f"{op}: {detail}")

    @property
    def errno_name(self) -> str:
        return errno_mod.errorcode.get(self.errno, str(self.errno))
