"""The one exception type for mistakes a user can make and fix.

Entry points catch it, print one message and exit with code 2; nothing else should turn it into a traceback.
"""
from __future__ import annotations

import errno
import os
import sys


class UserError(Exception):
    """A problem in a recipe, an override, a data file or the command line that the user can fix.

    `where` names the place (a file, optionally with a line, or a dotted key); `fix` says what to do.
    """

    def __init__(self, message: str, *, where: str | None = None, fix: str | None = None):
        self.message = message
        self.where = where
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.fix:
            text += f" ({self.fix})"
        return text


class UserErrors(UserError):
    """Several problems found together (every bad row of a file, say): one line each, all reported at once."""

    SHOWN = 30

    def __init__(self, errors: list[UserError]):
        self.errors = errors
        first = errors[0]
        super().__init__(first.message, where=first.where, fix=first.fix)

    def render(self) -> str:
        if len(self.errors) == 1:
            return self.errors[0].render()
        lines = [e.render() for e in self.errors[: self.SHOWN]]
        more = len(self.errors) - self.SHOWN
        if more > 0:
            lines.append(f"... and {more} more")
        return f"{len(self.errors)} problems:\n  " + "\n  ".join(lines)


def run_command(args, interrupted: str = "interrupted") -> int:
    """Run a parsed CLI command (`args.command(args)`): a UserError is one line on stderr and exit code 2."""
    try:
        return args.command(args) or 0
    except UserError as error:
        _say_once(f"error: {error.render()}")
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
    except Exception as exc:  # a machine fault (full disk, read-only folder) is one line too; a bug is not
        fault = machine_fault(exc)
        if fault is None:
            raise
        _say_once(f"error: {fault.render()}")
        return 2


def _say_once(line: str) -> None:
    """Print on stderr, except in the second and later of several training processes (GPUS=N): they meet the
    same problem as the first, and one message is enough (their exit code still says it)."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(line, file=sys.stderr)


MACHINE_FAULTS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                  errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                  errno.EPERM: "permission denied", errno.EIO: "the disk reported an input/output error"}
_FAULT_TEXT = {"No space left on device": errno.ENOSPC, "StorageFull": errno.ENOSPC,
               "file write failed": errno.ENOSPC, "Read-only file system": errno.EROFS,
               "ReadOnlyFilesystem": errno.EROFS}
"""How the libraries that write weights (torch.save, safetensors) word an OSError they wrap in their own type."""


def machine_fault(exc: BaseException) -> UserError | None:
    """A full disk or a read-only folder, however deep it was raised, as one UserError; None for anything else."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        code = exc.errno if isinstance(exc, OSError) else \
            next((c for text, c in _FAULT_TEXT.items() if text in str(exc)), None)
        if code in MACHINE_FAULTS:
            where = getattr(exc, "filename", None) if isinstance(exc, OSError) else None
            return UserError(f"cannot write: {MACHINE_FAULTS[code]}", where=str(where) if where else None,
                             fix="free some space or choose another folder (train.output_dir), then run again; "
                                 "a training run can continue with RESUME=1 from its last checkpoint")
        exc = exc.__cause__ or exc.__context__
    return None
