"""A sweep's finished runs in one compressed file: ``<output_dir>/runs.jsonl.xz``, written by ``--pack``.

A run folder keeps what aggregation reads, ``result.json`` and ``tempbalance/history.jsonl``; a study of a few
hundred runs is then a thousand small files. Packing moves them into one xz-compressed JSON-lines file beside the
tables, one line per run, sorted by name::

    {"name": "rte/shots16/ft/seed13", "result": {...result.json...}, "history": [{...}, ...]}

``history`` holds the records of ``history.jsonl`` in file order (absent for a run without one). A file is stored
as parsed JSON only when writing it back as the sweep and the training callback write it (``json.dumps(result,
indent=1)``; ``json.dumps(record) + "\\n"`` per history line) gives back its exact bytes; any other file is stored
as its text (``result_text``, ``history_text``). Unpacking therefore returns every byte, and `pack` checks that it
does before it deletes a file.

The sweep reads archived and loose runs alike (`record`, `history`): an archived run is finished under the same
checks as a loose ``result.json`` (its key and data fingerprints, see `recipes.sweep.provenance`), aggregation
reads both, and a loose ``result.json`` of a run takes precedence over its archived one. Read it without the
sweep: ``xzcat runs.jsonl.xz | head -n 1`` (or Python's `lzma`).
"""

from __future__ import annotations

import json
import lzma
import os
from pathlib import Path

from .grid import RESULT_FILE

ARCHIVE_FILE = "runs.jsonl.xz"
HISTORY_FILE = Path("tempbalance") / "history.jsonl"
_FILES = (Path(RESULT_FILE), HISTORY_FILE)  # what a run folder keeps of a run (what aggregation reads)

_CACHE: dict[str, tuple[tuple, dict[str, dict]]] = {}  # path -> (stat of the file, name -> entry)


def archive_path(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / ARCHIVE_FILE


def load(output_dir: str | os.PathLike) -> dict[str, dict]:
    """name -> entry of every archived run of ``output_dir`` (empty without an archive), read once per version of
    the file in this process. Raises ValueError for an archive that cannot be read (never: its runs would be run
    again as if they had not finished)."""
    path = archive_path(output_dir)
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
    cached = _CACHE.get(str(path))
    if cached is not None and cached[0] == version:
        return cached[1]
    try:
        lines = lzma.decompress(path.read_bytes()).decode("utf-8").splitlines()
        entries = {}
        for line in lines:
            entry = json.loads(line)
            entries[entry["name"]] = entry
    except (OSError, lzma.LZMAError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"cannot read {path} ({type(err).__name__}: {err}): the archive of this sweep's finished runs is "
            "damaged. Restore it (e.g. from git) before running or aggregating this sweep."
        ) from err
    _CACHE[str(path)] = (version, entries)
    return entries


def _result_text(entry: dict) -> str:
    return entry["result_text"] if "result_text" in entry else json.dumps(entry["result"], indent=1)


def _history_text(entry: dict) -> str | None:
    if "history_text" in entry:
        return entry["history_text"]
    if "history" in entry:
        return "".join(json.dumps(record) + "\n" for record in entry["history"])
    return None


def files(entry: dict) -> dict[Path, bytes]:
    """The files an archived run came from: relative path in its run folder -> exact content."""
    out = {Path(RESULT_FILE): _result_text(entry).encode("utf-8")}
    history = _history_text(entry)
    if history is not None:
        out[HISTORY_FILE] = history.encode("utf-8")
    return out


def record(output_dir: str | os.PathLike, name: str) -> dict | None:
    """The archived ``result.json`` record of run ``name``, or None (not archived, or not a complete record)."""
    entry = load(output_dir).get(name)
    if entry is None:
        return None
    if "result" in entry:
        rec = entry["result"]
    else:
        try:
            rec = json.loads(entry["result_text"])
        except ValueError:
            return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("results"), dict) else None


def history(output_dir: str | os.PathLike, name: str) -> list[dict]:
    """The archived history records of run ``name``, sorted by step, as `tb_hf.history.read_history` reads the
    file (empty: no history)."""
    entry = load(output_dir).get(name, {})
    if "history" in entry:
        records = list(entry["history"])
        if not all(isinstance(r, dict) and "step" in r and "alpha" in r for r in records):
            raise ValueError(f"{archive_path(output_dir)}: the history of {name} holds a line that is not a record")
        return sorted(records, key=lambda r: r["step"])
    if "history_text" in entry:  # stored as text (e.g. a torn last line): read by the one reader of the format
        import tempfile

        from tb_hf.history import read_history

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "history.jsonl"
            path.write_text(entry["history_text"])
            return read_history(path, missing_ok=True)
    return []


def _entry(name: str, result: bytes, history: bytes | None) -> dict:
    """The archive entry of a run's files: parsed JSON where that gives back the exact bytes, else the text."""
    entry: dict = {"name": name}
    text = result.decode("utf-8")
    try:
        parsed = json.loads(text)
        exact = json.dumps(parsed, indent=1) == text
    except ValueError:
        exact = False
    entry.update({"result": parsed} if exact else {"result_text": text})
    if history is not None:
        text = history.decode("utf-8")
        lines = text.split("\n")
        try:
            parsed = [json.loads(line) for line in lines[:-1]]
            exact = lines[-1] == "" and all(json.dumps(r) == line for r, line in zip(parsed, lines, strict=False))
        except ValueError:
            exact = False
        entry.update({"history": parsed} if exact else {"history_text": text})
    return entry


def _write(output_dir: Path, entries: dict[str, dict]) -> None:
    """Write the archive atomically (whole or absent), one line per run sorted by name; no archive without runs."""
    path = archive_path(output_dir)
    if not entries:
        path.unlink(missing_ok=True)
        return
    data = "".join(json.dumps(entries[name]) + "\n" for name in sorted(entries)).encode("utf-8")
    tmp = path.with_name(f"{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(lzma.compress(data, preset=9))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _loose(output_dir: Path) -> dict[str, Path]:
    """name -> folder of every run under ``output_dir/runs`` that has a ``result.json``."""
    runs = output_dir / "runs"
    return {p.parent.relative_to(runs).as_posix(): p.parent for p in sorted(runs.glob(f"**/{RESULT_FILE}"))}


def _prune(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to ``stop`` (excluded) while they are empty."""
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


def pack(output_dir: str | os.PathLike, *, complete=None) -> list[str]:
    """Move every run's ``result.json`` and ``tempbalance/history.jsonl`` under ``output_dir/runs/`` into the
    archive, replacing an archived entry of the same run; the other files of a run folder stay (empty folders go).

    The archive is written and read back, and every packed file compared byte for byte with the one on disk,
    before any file is deleted.

    Args:
        complete: ``complete(record_path) -> bool``: pack only runs whose ``result.json`` it accepts (the sweep
            leaves a half-written one loose, to be run again).

    Returns:
        The names of the packed runs.
    """
    root = Path(output_dir)
    loose = {n: f for n, f in _loose(root).items() if complete is None or complete(f / RESULT_FILE)}
    if not loose:
        return []
    entries = dict(load(root))
    expected: dict[str, dict[Path, bytes]] = {}
    for name, folder in loose.items():
        found = {rel: (folder / rel).read_bytes() for rel in _FILES if (folder / rel).exists()}
        entries[name] = _entry(name, found[Path(RESULT_FILE)], found.get(HISTORY_FILE))
        expected[name] = found
    _write(root, entries)
    stored = load(root)
    lost = [name for name, found in expected.items() if files(stored[name]) != found]
    if lost:
        raise RuntimeError(f"{archive_path(root)}: packing would change {lost[:3]}: nothing was deleted.")
    for name, found in expected.items():
        for rel in found:
            (loose[name] / rel).unlink()
        _prune(loose[name] / HISTORY_FILE.parent, root / "runs")
        _prune(loose[name], root / "runs")
    _prune(root / "runs", root)
    return sorted(expected)


def unpack(output_dir: str | os.PathLike, names=None) -> list[str]:
    """Write archived runs back as files in their run folders and take them out of the archive (the inverse of
    `pack`); a run that has a loose ``result.json`` is left as it is, and so is its archived entry.

    Args:
        names: Only these runs (default: every archived run).

    Returns:
        The names of the runs written back.
    """
    root = Path(output_dir)
    entries = dict(load(root))
    chosen = sorted(entries if names is None else set(names) & set(entries))
    written = []
    for name in chosen:
        folder = root / "runs" / name
        if (folder / RESULT_FILE).exists():
            continue
        for rel, data in files(entries[name]).items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            tmp = folder / rel.with_name(rel.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(folder / rel)
        written.append(name)
        del entries[name]
    if written:
        _write(root, entries)
    return written


def set_aside(output_dir: str | os.PathLike, names, replaced_file: str) -> None:
    """Take runs out of the archive, their ``result.json`` kept as ``replaced_file`` in their run folders (a run
    whose settings changed, to be run again: see `recipes.sweep.launch.replace_changed`)."""
    root = Path(output_dir)
    entries = dict(load(root))
    for name in names:
        folder = root / "runs" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / replaced_file).write_text(_result_text(entries.pop(name)))
    _write(root, entries)
