"""Shared by the command-line tests."""

from __future__ import annotations


def with_flags(args: list[str], change: dict[str, str | None]) -> list[str]:
    """A copy of ``args`` with each flag of ``change`` set to its value (replaced when present, else
    appended); a value of None appends the flag alone (a switch)."""
    args = list(args)
    for flag, value in change.items():
        if flag in args and value is not None:
            args[args.index(flag) + 1] = value
        else:
            args += [flag] if value is None else [flag, value]
    return args
