"""``python -m recipes.sweep CONFIG [options]``: check the config, run what is not done (in this process, in
``--workers`` processes or one ``--shard``), then aggregate."""

from __future__ import annotations

import argparse
import collections
import difflib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from . import archive, launch, provenance
from .grid import check_data, contrasts, expand_grid, load_config, parse_shard, select_runs, validate
from .report import write_report

logger = logging.getLogger("recipes.sweep")


class _Parser(argparse.ArgumentParser):
    """No prefix matching (``--method`` must not mean ``--methods``), and an unknown flag names the closest one."""

    def __init__(self, **kwargs):
        super().__init__(allow_abbrev=False, **kwargs)

    def error(self, message):
        if message.startswith("unrecognized arguments:"):
            known = [s for action in self._actions for s in action.option_strings]
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], known, n=1)
                if word.startswith("--") and close:
                    message += f" (did you mean {close[0]}?)"
                    break
        super().error(message)


def make_parser() -> argparse.ArgumentParser:
    from . import __doc__ as doc

    parser = _Parser(prog="python -m recipes.sweep", description=doc.split("\n\n")[0])
    parser.add_argument("config", help="Sweep YAML file.")
    parser.add_argument("--aggregate-only", action="store_true", help="Only aggregate the finished runs.")
    parser.add_argument("--dry-run", action="store_true", help="List the runs and whether they are done.")
    parser.add_argument(
        "--pack",
        action="store_true",
        help="Run nothing: move the result.json and tempbalance/history.jsonl of every finished run under output_dir "
        "into output_dir/runs.jsonl.xz (one compressed file; checked byte for byte before a file is deleted). The "
        "sweep reads packed runs as it reads loose ones: they count as finished and are aggregated.",
    )
    parser.add_argument(
        "--unpack",
        action="store_true",
        help="Run nothing: write the packed runs back as result.json and tempbalance/history.jsonl in their run "
        "folders (the inverse of --pack).",
    )
    parser.add_argument(
        "--launcher", help="Override the config's launcher ('inprocess', 'python', 'accelerate launch')."
    )
    parser.add_argument(
        "--shard",
        help="K/N (1 <= K <= N): run only part K of N of the grid (runs K, K+N, K+2N, ...), to spread a sweep over N "
        "processes or machines sharing the output folder; aggregate afterwards with --aggregate-only.",
    )
    parser.add_argument(
        "--methods",
        help="Comma-separated: run only these methods of the config (e.g. the core comparison first; the rest stay "
        "to do). Aggregation always covers every finished run of the grid.",
    )
    parser.add_argument(
        "--sizes",
        help="Comma-separated: run only these training-set sizes (as in the run folders: 16 for shots16, 0.01 for "
        "frac0.01), e.g. the small sizes of every task before the large ones.",
    )
    parser.add_argument(
        "--tasks",
        help="Comma-separated: run only these tasks of the config, in this order (e.g. the cheap tasks first).",
    )
    parser.add_argument(
        "--seeds",
        help="Comma-separated: run only these seeds of the config (e.g. a few seeds of every cell first, so that "
        "complete pairs accumulate evenly across tasks).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Run the grid in N single-threaded worker processes (shards 1/N ... N/N, OMP_NUM_THREADS=1 unless "
        "set; at most one per run to do), then aggregate. On a CPU machine N = number of cores beats one "
        "multi-threaded process. The workers stop when this process ends.",
    )
    parser.add_argument(
        "--redo-changed",
        action="store_true",
        help="Run again the finished runs whose settings have changed in the config since (their old result.json "
        "is kept as result.replaced.json). Without it such runs stop the sweep before the first run.",
    )
    return parser


def _check_output_dir(path: Path) -> None:
    """ValueError unless ``path`` is (or can become) a folder this process can write in."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"output_dir {path} is a file, not a folder: choose another output_dir in the config.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(
            f"cannot write in output_dir {path} ({err.strerror or err}): choose another output_dir."
        ) from err


def _changed_message(changed: list) -> str:
    shown = "\n  ".join(f"{run.name}: {launch.describe_changes(run)}" for run in changed[:5])
    more = f"\n  ... and {len(changed) - 5} more" if len(changed) > 5 else ""
    kinds = {
        "data" if k.startswith(provenance.DATA_PREFIX) else "unknown" if k == provenance.NO_SETTINGS else "args"
        for run in changed
        for k in launch.changes(run)
    }
    advice = "Run them again with --redo-changed (the old result.json is kept as result.replaced.json)"
    if "args" in kinds:
        advice += ", or give the new settings a new method name (a named variant in method_args)"
    if "data" in kinds:
        advice += "; for an edited data file, restoring its old content also makes them match"
    return (
        f"{len(changed)} finished run(s) were made with other settings than the config now gives them (arguments, "
        f"the content of a data file, or settings not recorded):\n  {shown}{more}\nTheir results are not reused. "
        f"{advice}."
    )


def _warn_unverified(runs: list) -> None:
    """One warning for every finished run whose result.json cannot vouch for its data files (recorded before the
    sweep stored data fingerprints, or the file is not on this machine): reused, never silently."""
    files: collections.Counter = collections.Counter()
    count = 0
    for run in runs:
        unverified = launch.unverified_files(run) if launch.status(run) == "done" else []
        count += bool(unverified)
        files.update(unverified)
    if count:
        names = ", ".join(f"{name} ({n} runs)" for name, n in files.most_common(6))
        more = f" and {len(files) - 6} more" if len(files) > 6 else ""
        logger.warning(
            f"sweep: warning: {count} finished run(s) could not be checked against their data files, recorded "
            f"before the sweep stored data fingerprints (or the file is not on this machine): {names}{more}. Their "
            "results are reused as they are; if one of these files changed after those runs, delete the runs' "
            "result.json to run them again (packed runs: --unpack them first)."
        )


def _refuse_conflicts(runs: list) -> None:
    """Refuse, before the first run, runs that a live sweep process runs with other settings in these folders."""
    held = [(run, why) for run in runs if launch.status(run) == "todo" and (why := launch.lock_conflict(run))]
    if held:
        shown = "\n  ".join(f"{run.name}: {why}" for run, why in held[:3])
        raise ValueError(
            f"{len(held)} run(s) of this sweep are being run by another sweep process with OTHER settings:\n  "
            f"{shown}" + (f"\n  ... and {len(held) - 3} more" if len(held) > 3 else "")
        )


def _refuse_live_runs(out: Path) -> None:
    """Refuse to pack or unpack while a sweep process runs a run under ``out`` (its files would be moving)."""
    held = [lock.parent for lock in out.glob(f"runs/**/{launch.LOCK_FILE}") if launch.holder(lock) is not None]
    if held:
        raise ValueError(
            f"{len(held)} run(s) under {out} are being run by a sweep process (e.g. {held[0]}): pack or unpack once "
            "it has finished."
        )


def _pack(out: Path, unpack: bool) -> int:
    """--pack / --unpack: every run under ``out``, whatever the config's grid (the archive is storage)."""
    from .results import read_record

    if unpack:
        names = archive.unpack(out)
        print(f"Unpacked {len(names)} runs from {archive.archive_path(out)} into {out / 'runs'}/.")
        return 0
    names = archive.pack(out, complete=lambda path: read_record(path) is not None)
    left = sorted(out.glob(f"runs/**/{launch.RESULT_FILE}"))
    print(f"Packed {len(names)} runs into {archive.archive_path(out)} ({len(archive.load(out))} runs in it).")
    if left:  # half-written or damaged: a normal run of the sweep runs them again
        print(f"{len(left)} result files are not complete records and stay where they are (e.g. {left[0]}).")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    ns = parser.parse_args(argv)
    if ns.workers < 1:
        parser.error(f"--workers must be >= 1, got {ns.workers}.")
    actions = [flag for flag, on in (("--aggregate-only", ns.aggregate_only), ("--dry-run", ns.dry_run),
                                     ("--pack", ns.pack), ("--unpack", ns.unpack)) if on]  # fmt: skip
    if len(actions) > 1:
        parser.error(f"{' and '.join(actions)} do different things: give one of them.")
    storage = ns.pack or ns.unpack
    # Every mistake in the command or the config stops here, before the first run, with exit status 2.
    try:
        shard = parse_shard(ns.shard) if ns.shard else None
        config = load_config(ns.config)
        runs = expand_grid(config)
        contrasts(config)  # checked for --aggregate-only too: the tables need it
        parent = os.environ.get("TB_SWEEP_VALIDATED") != "1"  # workers: checked by the parent
        parsed = validate(config, runs) if not (ns.aggregate_only or storage) and parent else None
        selected = select_runs(config, runs, ns.methods, ns.sizes, ns.tasks, ns.seeds)
        if shard:
            selected = selected[shard[0] - 1 :: shard[1]]
        if not ns.dry_run:
            _check_output_dir(Path(config["output_dir"]))
        if parent and not storage:
            _warn_unverified(runs)
        changed = [run for run in selected if launch.status(run) == "changed"]
        if changed and not (ns.redo_changed or ns.dry_run or ns.aggregate_only or storage):
            raise ValueError(_changed_message(changed))
        if parsed is not None:  # the data of every run this sweep will run, read once per task
            to_run = [run for run in selected if launch.status(run) != "done"]
            try:
                notes = check_data(to_run, parsed)
            except ValueError as err:
                if not ns.dry_run:
                    raise
                logger.warning(f"sweep: warning: without --dry-run this sweep would stop before its first run: {err}")
                notes = {}
            for note, names in notes.items():
                logger.warning(f"sweep: warning: {note} (in {len(names)} run(s), e.g. {names[0]})")
            if not ns.dry_run:
                _refuse_conflicts(to_run)
        if storage:
            _refuse_live_runs(Path(config["output_dir"]))
    except ValueError as err:
        parser.error(str(err))
    if storage:
        return _pack(Path(config["output_dir"]), unpack=ns.unpack)
    if ns.aggregate_only:
        _print_summary(config, runs)
        return 0
    if ns.dry_run:
        for run in selected:
            state = launch.status(run)
            note = f"  ({launch.describe_changes(run)})" if state == "changed" else ""
            print(f"{state:8s}{run.name}{note}")
        return 0
    if changed and os.environ.get("TB_SWEEP_VALIDATED") != "1":  # --redo-changed, once (the parent of workers)
        launch.replace_changed(changed)
        print(f"sweep: {len(changed)} changed runs set aside (result.replaced.json), to run again", file=sys.stderr)
    if ns.workers > 1 and not shard:
        todo = sum(launch.status(run) == "todo" for run in selected)
        workers = min(ns.workers, todo)  # no idle processes: --workers 100 for 2 runs starts 2
        if workers < ns.workers:
            print(f"sweep: {todo} runs to do, so {workers or 1} worker(s) instead of {ns.workers}", file=sys.stderr)
        if workers > 1:
            return _run_workers(ns, workers, config, runs)
    if "TB_SWEEP_PARENT" in os.environ and not sys.platform.startswith("linux"):
        launch.watch_parent(int(os.environ["TB_SWEEP_PARENT"]))  # on Linux prctl does it (launch._die_with_parent)
    start = time.time()
    launcher = ns.launcher or config.get("launcher", "inprocess")
    if launcher == "python":
        launcher = sys.executable
    label = f"shard {shard[0]}/{shard[1]}" if shard else "sweep"
    counts = launch.execute(selected, launcher, position=shard[0] - 1 if shard else 0, label=label)
    print(
        f"{label}: {len(selected)} runs: {counts['ok']} ran, {counts['done']} already done, {counts['failed']} failed"
        + (f", {counts['elsewhere']} left to another sweep process" if counts["elsewhere"] else "")
        + (f", {counts['conflict']} NOT run (another sweep's settings)" if counts["conflict"] else "")
        + f" ({time.time() - start:.0f} s)"
    )
    if shard:
        print("Aggregate with --aggregate-only once every shard is done.")
    else:
        _print_summary(config, runs)
    if counts["conflict"]:
        print(
            f"{label}: {counts['conflict']} run(s) did not run: another sweep process runs or finished them with "
            f"OTHER settings in {config['output_dir']} (the lines above name them). Give each config its own "
            "output_dir.",
            file=sys.stderr,
        )
        return 1
    return 1 if counts["failed"] else 0


def _print_summary(config: dict, runs: list) -> None:
    """Aggregate, print the table, then say what was written and which runs failed, changed or have not run."""
    out = Path(config["output_dir"])
    _, written = write_report(config, runs)
    states = [launch.status(run) for run in runs]
    if written:
        print((out / "summary.md").read_text())
        print(f"Wrote {', '.join(written)} to {out}/ ({states.count('done')} of {len(runs)} runs finished).")
    else:
        print(f"No run of this sweep has finished: nothing written to {out}/.")
    failed = [r for r, s in zip(runs, states, strict=True) if s == "todo" and (r.out / "error.txt").is_file()]
    if failed:
        names = ", ".join(r.name for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        print(f"{len(failed)} runs failed ({names}): the reason is in error.txt in each run's folder.")
    if states.count("changed"):
        print(
            f"{states.count('changed')} finished runs were made with other settings and are left out of the tables "
            "(other arguments, edited data, or settings not recorded; --dry-run lists them, --redo-changed runs them "
            "again)."
        )
    pending = states.count("todo") - len(failed)
    if pending:
        print(f"{pending} runs have not run yet.")


def _run_workers(ns: argparse.Namespace, workers: int, config: dict, runs: list) -> int:
    """Start ``workers`` shards of this sweep as processes, wait for them, aggregate. The workers (and the runs they
    start) end with this process, even when it is killed."""
    start = time.time()
    argv = [ns.config]
    for flag, value in (("--launcher", ns.launcher), ("--methods", ns.methods), ("--sizes", ns.sizes),
                        ("--tasks", ns.tasks), ("--seeds", ns.seeds)):  # fmt: skip
        if value is not None:
            argv += [flag, value]
    procs = launch.start_workers(argv, workers)
    failed = sum(proc.wait() != 0 for proc in procs)
    print(f"{workers} workers finished in {time.time() - start:.0f} s ({failed} of them had failed runs)")
    _print_summary(config, runs)
    return 1 if failed else 0
