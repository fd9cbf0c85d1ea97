"""Running a sweep's runs: what is done, claiming a run, launching it (in-process, as a process, under accelerate),
progress lines, and worker processes that end with their parent.

A run is *done* when its folder holds ``result.json`` written for the same settings (`grid.run_key`) and the same
data (the sha256 of each local data file it read, see `provenance`), or the sweep's archive (``runs.jsonl.xz``, see
`archive`) holds such a record for it; a record written for other settings or other data, or one that stores no
settings, makes the run *changed*: never reused silently (see `cli.main`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

from tqdm.auto import tqdm

from . import archive, provenance
from .grid import RESULT_FILE, Run

RECIPE = Path(__file__).resolve().parents[1] / "glue" / "run_glue.py"
LOCK_FILE = "running.lock"
#: Where `replace_changed` moves the result of a run whose settings changed (kept, never read by aggregation).
REPLACED_FILE = "result.replaced.json"


# --------------------------------------------------------------------------------------------------
# What is done


def stored_record(run: Run) -> dict | None:
    """The run's ``result.json`` record (in its folder, else in the sweep's archive), or None if there is none (or
    it cannot be read: a run to redo)."""
    from .results import read_record

    record = read_record(run.out / RESULT_FILE)
    return archive.record(run.root, run.name) if record is None else record


def changes(run: Run, record: dict | None = None) -> dict[str, tuple]:
    """How the finished run differs from the config's (empty: the same run, or no record): its settings, its data
    files' content, or a record that stores no settings (see `provenance.changes`)."""
    record = stored_record(run) if record is None else record
    return {} if record is None else provenance.changes(run, record)


def status(run: Run) -> str:
    """``"done"`` (finished with these settings), ``"changed"`` (finished with other settings) or ``"todo"``."""
    record = stored_record(run)
    if record is None:
        return "todo"
    return "changed" if changes(run, record) else "done"


def is_done(run: Run) -> bool:
    return status(run) == "done"


def describe_changes(run: Run, limit: int = 4) -> str:
    """``learning_rate 0.0001 -> 0.0002, num_train_epochs 10 -> 20``: what changed since the run finished."""
    items = list(changes(run).items())
    text = ", ".join(provenance.describe(k, old, new) for k, (old, new) in items[:limit])
    return text + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def unverified_files(run: Run) -> list[str]:
    """The data files of a done run that its ``result.json`` cannot vouch for (see `provenance.unverified`)."""
    record = stored_record(run)
    return [] if record is None or changes(run, record) else provenance.unverified(run, record)


def replace_changed(runs: list[Run]) -> None:
    """Set aside the results of runs whose settings changed (as ``result.replaced.json`` in their folders), so that
    they are run again: a loose ``result.json`` is renamed, an archived one taken out of the archive (one rewrite
    of each archive)."""
    from .results import read_record

    archived: dict[Path, list[str]] = {}
    for run in runs:
        if read_record(run.out / RESULT_FILE) is not None:
            (run.out / RESULT_FILE).replace(run.out / REPLACED_FILE)
        else:
            archived.setdefault(run.root, []).append(run.name)
    for root, names in archived.items():
        archive.set_aside(root, names, REPLACED_FILE)


# --------------------------------------------------------------------------------------------------
# Claiming a run (several sweep processes over one folder)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class Conflict(str):
    """Why a run is skipped when another sweep process runs it, or has finished it, with OTHER settings: two sweeps
    of different configs share the output folder, and this sweep's run would never happen."""


def holder(lock: Path) -> tuple[str, str | None] | None:
    """Who holds ``lock`` (``running.lock``: ``host pid key``; locks of older sweeps lack the key): (where, run
    key), or None when nobody does (no lock, an unreadable one, or one of a dead process of this machine)."""
    try:
        host, pid, *key = lock.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return None  # no lock, or unreadable or half-written: stale
    if host != socket.gethostname():
        return f"running on {host} (process {pid}; {lock})", (key or [None])[0]
    if pid != os.getpid() and _alive(pid):
        return f"running in process {pid}", (key or [None])[0]
    return None


def _conflict(run: Run, where: str, key: str) -> Conflict:
    return Conflict(
        f"{where} with OTHER settings (run key {key}; this config's is {run.key}): another sweep with a different "
        f"config uses this output folder ({run.out}). Give each config its own output_dir, or wait for the other "
        "sweep to end."
    )


def lock_conflict(run: Run) -> Conflict | None:
    """Why ``run`` is held by a live sweep process with other settings (see `Conflict`), or None."""
    held = holder(run.out / LOCK_FILE)
    if held is None or held[1] is None or held[1] == run.key:
        return None
    return _conflict(run, *held)


def _claim(run: Run) -> str | None:
    """Take ``run`` for this process, or say who holds it.

    The claim is ``running.lock`` in the run's folder holding ``host pid key`` (the run key), created exclusively,
    so that two sweep processes over one grid (started at different times, or on machines that share the folder)
    never run the same run twice. A lock of a process of this machine that is gone (killed, crashed) is taken over;
    one of another machine cannot be checked from here and is left alone (delete it by hand if that machine's sweep
    is dead). A holder with another key runs other settings in this folder: a `Conflict`.

    Returns:
        None once this process holds the run, else why it is skipped.
    """
    lock, me = run.out / LOCK_FILE, f"{socket.gethostname()} {os.getpid()} {run.key}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            held = holder(lock)
            if held is None:
                lock.unlink(missing_ok=True)
                continue
            where, key = held
            return _conflict(run, where, key) if key is not None and key != run.key else where
        with os.fdopen(fd, "w") as f:
            f.write(me)
        return None
    return "taken by another process"


def _finished_elsewhere(run: Run) -> str | None:
    """Why ``run`` need not (or must not) run here after all: another process finished it with these settings, or
    with other settings (a `Conflict`: its result is not overwritten)."""
    state = status(run)
    if state == "changed":
        return Conflict(
            f"finished meanwhile by another sweep with OTHER settings ({describe_changes(run)}): another config uses "
            f"this output folder ({run.out}). Give each config its own output_dir."
        )
    return "finished elsewhere" if state == "done" else None


def _take(run: Run) -> str | None:
    """None once this process holds ``run`` (see `_claim`); else why it is skipped: another process holds it, or
    finished it after this sweep listed its work."""
    why = _finished_elsewhere(run)
    if why is not None:
        return why
    why = _claim(run)
    if why is None:
        why = _finished_elsewhere(run)  # finished between the check and the claim
        if why is not None:
            (run.out / LOCK_FILE).unlink()
    return why


# --------------------------------------------------------------------------------------------------
# Launchers


def _run_inprocess(run: Run) -> dict:
    from recipes.glue import run_glue

    return run_glue.main(*run_glue.parse_args(run_glue.config_to_argv(run.args)))


_PRCTL = None


def _die_with_parent(parent: int) -> None:
    """``preexec_fn`` of the processes the sweep starts: on Linux the kernel sends them SIGTERM when the sweep
    process dies, even by SIGKILL (``prctl(PR_SET_PDEATHSIG)``), so no worker or run outlives it."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above: nobody would signal us
        os._exit(1)


def popen_kwargs() -> dict:
    """Keyword arguments of `subprocess.Popen`/`run` for a child that dies with this process (Linux)."""
    global _PRCTL
    if not sys.platform.startswith("linux"):
        return {}
    if _PRCTL is None:  # looked up here, in the parent: the child only calls it
        import ctypes

        _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
    return {"preexec_fn": functools.partial(_die_with_parent, os.getpid())}


def watch_parent(parent: int) -> None:
    """Where prctl is missing (not Linux): a worker exits once its parent is gone."""
    import threading

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _run_subprocess(run: Run, launcher: str) -> dict:
    from recipes.glue import run_glue

    cmd = [*shlex.split(launcher), str(RECIPE), *run_glue.config_to_argv(run.args)]
    with open(run.out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs())
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode} (see {run.out / 'log.txt'}): {shlex.join(cmd)}")
    with open(run.out / "all_results.json") as f:
        return json.load(f)


@contextlib.contextmanager
def _quiet_libraries(log_path: Path):
    """Keep the sweep's progress bar readable: library warnings and progress bars off, printed logs to a file."""
    import datasets
    import transformers

    old = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    transformers.logging.disable_progress_bar()
    try:
        with open(log_path, "w") as log, contextlib.redirect_stdout(log):
            yield
    finally:
        transformers.logging.set_verbosity(old)
        datasets.enable_progress_bars()
        transformers.logging.enable_progress_bar()


# --------------------------------------------------------------------------------------------------
# Progress and execution


class _Progress:
    """A tqdm bar on a terminal; plain lines (``sweep: [3/9] rte/frac0.05/ft/seed13 ok (45 s)``) when stderr
    is a file or a pipe, where a bar's escape codes would only be noise."""

    def __init__(self, total: int, label: str, position: int):
        self.total, self.label, self.done = total, label, 0
        self.bar = None
        if total and sys.stderr.isatty():
            desc = f"sweep[{position}]" if position else "sweep"
            self.bar = tqdm(total=total, desc=desc, unit="run", position=position, leave=True)

    def start(self, run: Run) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(run.name)

    def finish(self, run: Run, note: str, seconds: float) -> None:
        self.done += 1
        if self.bar is not None:
            if note != "ok":
                tqdm.write(f"{self.label}: {run.name} {note}")
            self.bar.update()
        else:
            print(f"{self.label}: [{self.done}/{self.total}] {run.name} {note} ({seconds:.0f} s)", file=sys.stderr)
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _write_result(run: Run, results: dict, seconds: float, data: dict[str, str | None]) -> None:
    record = {
        "task": run.task,
        "size_key": run.size_key,
        "size": run.size,
        "fraction": run.fraction,
        "method": run.method,
        "lora": run.lora,
        "seed": run.seed,
        "run_seconds": seconds,
        "key": run.key,  # what defines the run (its arguments but output_dir): a changed config is never reused
        "args": run.args,
        "data": data,  # sha256 of each local data file, taken before the run: an edited file is never reused
        "results": results,
    }
    tmp = run.out / f"{RESULT_FILE}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(run.out / RESULT_FILE)  # whole or absent, never half-written


def execute(
    runs: list[Run], launcher: str = "inprocess", *, quiet: bool = True, position: int = 0, label: str = "sweep"
) -> dict[str, int]:
    """Run what is not done yet; returns counts of ``done`` (skipped), ``ok`` and ``failed`` runs, ``elsewhere``:
    runs another sweep process over the same folders was running (see `_claim`) or finished meanwhile, and
    ``conflict``: runs another sweep process runs or finished with other settings (they did not run here).

    A failing run (any exception, or run_glue exiting) leaves its traceback in ``error.txt`` and the others go on.
    A run whose stored result was made with other settings is not run here (`cli.main` refuses it, or sets its
    result aside with ``--redo-changed`` first).
    """
    todo = [run for run in runs if status(run) == "todo"]
    counts = {"done": len(runs) - len(todo), "ok": 0, "failed": 0, "elsewhere": 0, "conflict": 0}
    if counts["done"]:
        print(f"{label}: skipped {counts['done']} finished runs, {len(todo)} to run", file=sys.stderr)
    progress = _Progress(len(todo), label, position)
    for run in todo:
        progress.start(run)
        run.out.mkdir(parents=True, exist_ok=True)
        why = _take(run)
        if why is not None:
            counts["conflict" if isinstance(why, Conflict) else "elsewhere"] += 1
            progress.finish(run, f"{'NOT RUN' if isinstance(why, Conflict) else 'skipped'} ({why})", 0.0)
            continue
        try:
            (run.out / "error.txt").unlink(missing_ok=True)
            data = provenance.fingerprints(run.args)  # the files as this run reads them
            start = time.time()
            try:
                if launcher == "inprocess":
                    with _quiet_libraries(run.out / "log.txt") if quiet else contextlib.nullcontext():
                        results = _run_inprocess(run)
                else:
                    results = _run_subprocess(run, launcher)
            except (Exception, SystemExit):  # SystemExit: run_glue refused the run's arguments
                counts["failed"] += 1
                (run.out / "error.txt").write_text(traceback.format_exc())
                progress.finish(run, f"FAILED (see {run.out / 'error.txt'})", time.time() - start)
                continue
            _write_result(run, results, time.time() - start, data)
        finally:
            (run.out / LOCK_FILE).unlink(missing_ok=True)
        counts["ok"] += 1
        progress.finish(run, "ok", time.time() - start)
    progress.close()
    return counts


def start_workers(argv: list[str], workers: int) -> list[subprocess.Popen]:
    """``workers`` processes ``python -m recipes.sweep ARGV --shard k/N``, single-threaded unless OMP_NUM_THREADS is
    set, that end with this process (even when it is killed)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    env = dict(
        os.environ,
        TB_SWEEP_VALIDATED="1",
        TB_SWEEP_PARENT=str(os.getpid()),
        PYTHONPATH=root + (os.pathsep + path if path else ""),  # `recipes` from any working directory
    )
    env.setdefault("OMP_NUM_THREADS", "1")
    cmd = [sys.executable, "-m", "recipes.sweep", *argv]
    return [
        subprocess.Popen([*cmd, "--shard", f"{k}/{workers}"], env=env, stdout=subprocess.DEVNULL, **popen_kwargs())
        for k in range(1, workers + 1)
    ]
