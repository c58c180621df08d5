"""The one exception type for mistakes a user can make and fix.

Entry points catch it, print one message and exit with code 2; nothing else should turn it into a traceback.
"""
from __future__ import annotations

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
        print(f"error: {error.render()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{interrupted}", file=sys.stderr)
        return 130
