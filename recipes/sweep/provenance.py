"""What a finished run's ``result.json`` vouches for, compared with what the config gives the run now: its arguments
(their key, `grid.run_key`) and the content of every local data file it read (sha256, in the record's ``data``).

A record whose arguments or data differ is *changed* (never reused silently); a record with no arguments at all (the
oldest layout) is changed too, since nothing says what it ran. A record written before data fingerprints were
stored, or whose file is not on this machine, is accepted but *unverified* for those files (`unverified`), and the
sweep says so once. A GLUE task read from the Hub has no local file: nothing to fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .grid import Run, changed_settings

#: The `changes` entry of a record that stores no arguments (written before the sweep stored them).
NO_SETTINGS = "result.json"
#: The prefix of a `changes` entry for a data file whose content differs from the run's.
DATA_PREFIX = "data file "

_HASHES: dict[tuple[str, int, int], str] = {}  # (real path, size, mtime_ns) -> sha256: one read per file version


def data_files(args: dict) -> list[tuple[str, Path]]:
    """(label, path) of each local data file a run with these run_glue arguments reads (`recipes.data.task_files`)."""
    from recipes.data import task_files

    return task_files(
        args.get("task_name"),
        glue_dir=args.get("glue_dir"),
        train_file=args.get("train_file"),
        validation_file=args.get("validation_file"),
    )


def sha256_of(path: str | os.PathLike) -> str | None:
    """The sha256 of a file's content (None if it cannot be read), computed once per (path, size, mtime) in this
    process, so that a large unchanged file is not read again for every run that uses it."""
    try:
        stat = os.stat(path)
        key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
        if key not in _HASHES:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            _HASHES[key] = digest.hexdigest()
        return _HASHES[key]
    except OSError:
        return None


def fingerprints(args: dict) -> dict[str, str | None]:
    """label -> sha256 (None: unreadable) of the run's data files: what ``result.json`` stores as ``data``."""
    return {label: sha256_of(path) for label, path in data_files(args)}


def changes(run: Run, record: dict) -> dict[str, tuple]:
    """How a finished run differs from its config now: changed arguments (name -> (old, new)), data files whose
    content changed (``data file <label>`` -> (old sha256, new sha256)), or ``result.json`` -> (None, None) for a
    record that stores no arguments. Empty: the record vouches for this run (maybe `unverified` for some files)."""
    args = record.get("args")
    if not isinstance(args, dict):
        return {NO_SETTINGS: (None, None)}
    found = {} if record.get("key") == run.key else changed_settings(args, run.args)
    if found:
        return found
    stored = record.get("data")
    if isinstance(stored, dict):
        for label, path in data_files(run.args):
            old, new = stored.get(label), sha256_of(path)
            if old is not None and new is not None and old != new:
                found[DATA_PREFIX + label] = (old, new)
    return found


def unverified(run: Run, record: dict) -> list[str]:
    """The run's data files that a record with the run's settings cannot vouch for: it was written before data
    fingerprints were stored, or the file cannot be read here (another machine; then it is not checked)."""
    stored = record.get("data")
    stored = stored if isinstance(stored, dict) else {}
    return [label for label, path in data_files(run.args) if stored.get(label) is None or sha256_of(path) is None]


def describe(name: str, old, new) -> str:
    """One `changes` entry in words."""
    if name == NO_SETTINGS:
        return "result.json stores no settings (written by an older sweep): nothing says it matches the config"
    if name.startswith(DATA_PREFIX):
        return f"{name} was edited since the run (sha256 {str(old)[:12]} -> {str(new)[:12]})"
    return f"{name} {old!r} -> {new!r}"
