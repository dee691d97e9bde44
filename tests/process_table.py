"""The child processes of a process, read from Linux's /proc: for tests that check jobs are reaped."""

from __future__ import annotations

from pathlib import Path


def child_states(parent: int) -> dict[int, str]:
    """pid -> state letter ("R", "S", "Z" for defunct, ...) of every process whose parent is ``parent``."""
    found = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat_file.read_text()
        except OSError:
            continue  # the process ended while we looked
        fields = text[text.rindex(")") + 2:].split()  # after "pid (command)": state, ppid, ...
        if int(fields[1]) == parent:
            found[int(stat_file.parent.name)] = fields[0]
    return found
