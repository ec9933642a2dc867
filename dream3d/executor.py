"""Run many ``generate`` jobs: in series in this process, or as Ray tasks on this machine or a cluster.

A job is a :class:`RunSpec`: a resolved config and the folder it runs in, under one output folder. Every
job calls the same :func:`dream3d.pipeline.generate` as ``dream3d generate``, in its own run folder, with its
output in the folder's ``generate.log``. A finished run is skipped and an unfinished one resumes from its
checkpoint, so a batch can be run again until it is complete. A Ray worker that dies (killed, out of memory,
its node lost) has its task retried up to ``retries`` times, and the retry resumes from the checkpoint. An
error in one run is recorded and the others go on. While it runs one progress line shows the runs done,
failed, running and waiting and the ETA; ``write_summary`` writes ``summary.csv`` and ``summary.json``.

On a cluster every node writes straight into the output folder, so it must be on a file system that every
node mounts at the same path (NFS, a cloud file store); a task on a node that does not see it fails with
that message rather than writing where nobody looks.

Ray is optional (``pip install 'dream3d[batch]'``) and imported only when a batch runs on it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sys
import time
import traceback
import uuid
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field

from .configtools import ConfigError, schema_at, to_plain
from .errors import UserError
from .io import atomic_write_text
from .pipeline import RESUME_MAY_CHANGE, RunError, config_changes, generate, mesh_command, mesh_error

LOG_NAME = "generate.log"
MARKER = ".dream3d-batch"  # written by the driver into the output folder; tasks check they can see it
INSTALL_RAY = (
    "this needs Ray, an optional dependency: pip install 'dream3d[batch]' (or pip install ray); "
    "or pass --local to run the prompts one after another in this process"
)


class RunsFailed(RuntimeError):
    """Some runs failed and the others finished; the message names them (the CLI exits with 1)."""


def check_failures(rows: list[dict], out_dir: str, noun: str = "runs") -> None:
    """Raise :class:`RunsFailed` naming the failed runs, if any."""
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:
        named = "; ".join(f"{r['name']}: {r['error']}" for r in failed[:3]) + ("; ..." if len(failed) > 3 else "")
        raise RunsFailed(
            f"{len(failed)} of {len(rows)} {noun} failed ({named}); see {os.path.join(out_dir, 'summary.csv')} and "
            f"each one's {LOG_NAME}. Run the same command again to retry them"
        )


@dataclass
class RunSpec:
    name: str  # the run folder, relative to the output folder
    cfg: object  # the RunConfig
    labels: dict = field(
        default_factory=dict
    )  # what the summary and the gallery show: prompt, preset, seed, image, ...
    title: str = ""  # how messages name this run (e.g. "line 3 of prompts.txt")


@dataclass
class Resources:
    """Where the runs go. ``local``: in series in this process. Otherwise Ray: a local instance sized by
    ``workers`` (runs at a time), or the cluster at ``address``; each task asks for ``cpus_per_run`` CPUs
    (also its torch threads) and ``gpus_per_run`` GPUs."""

    local: bool = False
    address: str | None = None
    workers: int | None = None
    cpus_per_run: float | None = None
    gpus_per_run: float | None = None
    retries: int = 2


def is_finished(run_dir: str) -> bool:
    """A run is finished when its metrics.json exists and its mesh stage did not fail."""
    return os.path.exists(os.path.join(run_dir, "metrics.json")) and mesh_error(run_dir) is None


def check_specs(specs: list[RunSpec], out_dir: str) -> None:
    """Refuse, before anything runs, two runs that would share a folder and a folder that holds a run
    with other settings than its spec now gives (the list was edited after that run)."""

    seen: dict[str, str] = {}
    remesh: list[str] = []  # finished runs whose list changed only in mesh.* / output.*: one command each
    for s in specs:
        if s.name in seen:
            raise ConfigError(
                f"{seen[s.name]} and {s.title or s.name} would share the folder {os.path.join(out_dir, s.name)}; "
                "rename one (folder names keep only letters and digits)"
            )
        seen[s.name] = s.title or s.name
        run_dir = os.path.join(out_dir, s.name)
        saved = os.path.join(run_dir, "config.yaml")
        if not any(os.path.exists(os.path.join(run_dir, n)) for n in ("checkpoint.pt", "metrics.json")):
            continue  # nothing trained yet (a run that failed before its first checkpoint): nothing to lose
        done = is_finished(
            run_dir
        )  # (a run whose mesh stage failed is resumable: mesh.* may change, as --resume allows)
        changed = config_changes(s.cfg, saved, () if done else RESUME_MAY_CHANGE)
        if done and not s.cfg.output.mesh:  # a list that no longer asks for a mesh: the finished run's stays
            changed = [c for c in changed if not c.startswith("output.")]
        if not changed:
            continue
        listed = f"{s.title or s.name} now gives ({'; '.join(changed[:6])})"
        if done and not config_changes(s.cfg, saved, ("mesh.", "output.")):  # training would be the same
            keys = [c.split(":", 1)[0] for c in changed]
            remesh.append(
                mesh_command(run_dir, [_override(k, schema_at(s.cfg, k)) for k in keys if k != "output.mesh"])
            )
            continue
        raise RunError(
            f"{run_dir} holds a{' finished' if done else 'n unfinished'} run with other settings than {listed}; "
            "delete that folder to run it again, or use another -o"
        )
    if remesh:
        raise RunError(
            f"{len(remesh)} finished run(s) in {out_dir} have other mesh settings than the list now gives; training "
            f"is the same, so mesh them again with: {'; '.join(remesh)} (or delete those folders to run them again)"
        )


def _override(key: str, value) -> str:
    """``key=value`` as the command line takes it (lists and booleans in YAML's flow form), quoted for a shell."""
    import shlex

    text = value if isinstance(value, str) else json.dumps(to_plain(value))
    return shlex.quote(f"{key}={text}")


def _metrics_fields(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "metrics.json")) as fh:
            m = json.load(fh)
    except (OSError, ValueError):
        return {}
    train = m.get("train", {})
    return {
        "total_seconds": m.get("total_seconds"),
        "steps": train.get("steps"),
        "steps_per_second": train.get("steps_per_second"),
        "files": m.get("files", {}),
    }


def summary_row(spec: RunSpec, status: str, run_dir: str, **extra) -> dict:
    return {
        "name": spec.name,
        "status": status,
        **spec.labels,
        "error": None,
        **_metrics_fields(run_dir),
        "log": os.path.join(spec.name, LOG_NAME),
        **extra,
    }


def _node() -> str:
    """This process's Ray node id (a task's), else the host name."""
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def run_one(spec: RunSpec, out_dir: str, threads: int | None = None, batch_id: str = "") -> dict:
    """One run, the body of a Ray task and of a series step: ``generate`` into ``out_dir/spec.name`` with
    its output in that folder's generate.log. Resumes an unfinished run; returns the summary row, with
    the error of a failed run. KeyboardInterrupt (after the run has checkpointed) goes on up."""
    t0 = time.time()
    run_dir = os.path.join(out_dir, spec.name)
    host = socket.gethostname()
    if batch_id and not os.path.exists(os.path.join(out_dir, MARKER)):
        return summary_row(
            spec,
            "failed",
            run_dir,
            error=f"the output folder {out_dir} is not on host {host}'s file system: a batch on a "
            "cluster writes into a folder that every node mounts at the same path (a shared file system)",
            host=host,
            node=_node(),
            attempts=1,
            wall_seconds=0.0,
        )
    if is_finished(run_dir):
        return summary_row(spec, "skipped", run_dir, host=host, node=_node(), attempts=0, wall_seconds=0.0)
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, LOG_NAME)
    tag = f"=== dream3d batch {batch_id or 'series'}:"
    try:
        with open(log_path) as fh:
            attempts = 1 + sum(tag in line for line in fh) if batch_id else 1
    except OSError:
        attempts = 1
    if threads:
        import torch

        torch.set_num_threads(threads)
    with open(log_path, "a", buffering=1) as fh, redirect_stdout(fh), redirect_stderr(fh):
        print(
            f"{tag} attempt {attempts} on {host} (pid {os.getpid()}), {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True
        )
        resume = os.path.exists(os.path.join(run_dir, "checkpoint.pt"))
        try:
            generate(spec.cfg, run_dir, resume=resume, log=lambda m: print(m, flush=True))
            status, error = (
                ("done", None) if is_finished(run_dir) else ("failed", "the run stopped before its last step")
            )
        except Exception as e:  # any failure is this run's, recorded; the batch goes on
            traceback.print_exc()
            status, error = "failed", str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
    return summary_row(
        spec,
        status,
        run_dir,
        error=error,
        host=host,
        node=_node(),
        attempts=attempts,
        wall_seconds=round(time.time() - t0, 2),
    )


class Progress:
    """One line for the whole batch. On a terminal it is rewritten in place; elsewhere (a log file) it is
    printed again only when the counts change. ``message`` prints a line above it."""

    def __init__(self, total: int, stream=None):
        self.total, self.stream = total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = self.failed = self.running = 0
        self.durations: list[float] = []  # wall seconds of runs that finished in this batch
        self.started: dict[str, float] = {}  # run name -> when it was first seen running
        self.slots = 1  # the most runs seen running at once
        self._last = ""

    def eta(self) -> str:
        left = self.total - self.done - self.failed
        if not left:
            return "0:00"
        if not self.durations:
            return "?"
        mean, now = sum(self.durations) / len(self.durations), time.time()
        work = sum(max(mean - (now - t), 0.0) for t in self.started.values()) + (left - len(self.started)) * mean
        secs = int(work / max(self.slots, 1))
        return (
            f"{secs // 3600}:{secs // 60 % 60:02d}:{secs % 60:02d}" if secs >= 3600 else f"{secs // 60}:{secs % 60:02d}"
        )

    def text(self, with_eta: bool = True) -> str:
        waiting = self.total - self.done - self.failed - self.running
        line = f"runs: {self.done}/{self.total} done, {self.failed} failed, {self.running} running, {waiting} waiting"
        return line + (f", ETA {self.eta()}" if with_eta else "")

    def show(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.text() + "\033[K")
            self.stream.flush()
        elif self.text(False) != self._last:
            print(self.text(), file=self.stream, flush=True)
        self._last = self.text(False)

    def message(self, msg: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        print(msg, file=self.stream, flush=True)
        if self.tty and self._last:
            self.show()

    def close(self) -> None:
        if self.tty and self._last:
            self.stream.write("\n")
            self.stream.flush()


def _describe(row: dict, k: int, n: int) -> str:
    what = f"[{k}/{n}] {row['name']}"
    if row["status"] == "skipped":
        return f"{what}: finished before, skipped"
    if row["status"] == "done":
        sps = row.get("steps_per_second")
        return f"{what}: done in {row['wall_seconds']:.0f}s" + (f" ({sps:.2f} steps/s)" if sps else "")
    return f"{what}: FAILED: {row['error']} (log: {row['log']})"


def run_specs(specs: list[RunSpec], out_dir: str, resources: Resources | None = None, stream=None) -> list[dict]:
    """Run every spec into ``out_dir`` (checked first with :func:`check_specs`); returns one summary row per
    spec, in order. Finished runs are skipped without starting anything. The progress line and a line per
    finished run go to ``stream`` (stderr)."""
    resources = resources or Resources(local=True)
    check_specs(specs, out_dir)
    progress = Progress(len(specs), stream)
    say = progress.message
    rows: list[dict | None] = [None] * len(specs)
    todo = []
    for i, s in enumerate(specs):
        if is_finished(os.path.join(out_dir, s.name)):
            rows[i] = summary_row(s, "skipped", os.path.join(out_dir, s.name), attempts=0, wall_seconds=0.0)
            progress.done += 1
            say(_describe(rows[i], i + 1, len(specs)))
        else:
            todo.append(i)
    try:
        if todo and resources.local:
            _run_series(specs, todo, out_dir, rows, progress, say)
        elif todo:
            _run_ray(specs, todo, out_dir, resources, rows, progress, say)
    except KeyboardInterrupt:
        for i in todo:
            if rows[i] is None:
                rows[i] = summary_row(specs[i], "interrupted", os.path.join(out_dir, specs[i].name))
        raise
    finally:
        progress.close()
    return rows


def _run_series(specs, todo, out_dir, rows, progress, say) -> None:
    for i in todo:
        progress.running = 1
        progress.started = {specs[i].name: time.time()}
        progress.show()
        rows[i] = run_one(specs[i], out_dir)
        _count(rows[i], progress)
        progress.running, progress.started = 0, {}
        say(_describe(rows[i], i + 1, len(specs)))
        progress.show()


def _count(row: dict, progress: Progress) -> None:
    if row["status"] == "failed":
        progress.failed += 1
    else:
        progress.done += 1
        if row["status"] == "done":
            progress.durations.append(row["wall_seconds"])


def import_ray(local: bool):
    """Ray, imported on first use. A local instance stays on the loopback interface: this variable makes
    Ray take 127.0.0.1 as the node address (as it does on macOS and Windows), read when Ray is imported."""
    if local and "ray" not in sys.modules:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise UserError(INSTALL_RAY) from None
    return ray


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _start_ray(ray, resources: Resources) -> tuple[bool, float, float]:
    """Connect to (or start) Ray; returns (started here, CPUs per task, GPUs per task). Locally: one run
    per GPU where there are GPUs, otherwise one per core, the cores divided between the runs."""
    import logging

    if resources.workers is not None and resources.workers < 1:
        raise UserError(f"--workers must be at least 1, got {resources.workers}")
    started = False
    if resources.address:
        if resources.workers:
            raise UserError(
                "--workers sizes a Ray started on this machine; on a cluster, --cpus-per-run and --gpus-per-run "
                "say what each run takes"
            )
        if not ray.is_initialized():
            ray.init(address=resources.address, log_to_driver=False, logging_level=logging.WARNING)
            started = True
        gpus = ray.cluster_resources().get("GPU", 0)
        gpus_per_run = resources.gpus_per_run if resources.gpus_per_run is not None else (1.0 if gpus else 0.0)
        return started, resources.cpus_per_run or 1.0, gpus_per_run
    cores = _cores()
    import torch

    n_gpus = torch.cuda.device_count()
    gpus_per_run = resources.gpus_per_run if resources.gpus_per_run is not None else (1.0 if n_gpus else 0.0)
    workers = resources.workers or (max(int(n_gpus / gpus_per_run), 1) if gpus_per_run else cores)
    cpus_per_run = resources.cpus_per_run or float(max(cores // workers, 1))
    if not ray.is_initialized():
        ray.init(
            num_cpus=max(int(workers * cpus_per_run), cores),
            num_gpus=n_gpus,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.WARNING,
        )
        started = True
    return started, cpus_per_run, gpus_per_run


def _run_ray(specs, todo, out_dir, resources: Resources, rows, progress, say) -> None:
    ray = import_ray(local=not resources.address)
    batch_id = uuid.uuid4().hex[:12]
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(os.path.join(out_dir, MARKER), batch_id + "\n")
    started, cpus, gpus = _start_ray(ray, resources)
    try:
        task = ray.remote(run_one).options(
            num_cpus=cpus,
            num_gpus=gpus,
            max_retries=resources.retries,
            retry_exceptions=False,
            scheduling_strategy="SPREAD",
        )
        threads = max(int(cpus), 1)
        t0 = time.time()
        refs = {task.remote(specs[i], out_dir, threads, batch_id): i for i in todo}
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=1.0)
                for ref in ready:
                    i = refs.pop(ref)
                    try:
                        rows[i] = ray.get(ref)
                    except ray.exceptions.RayError as e:  # the worker died more often than the retries allow
                        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                        rows[i] = summary_row(
                            specs[i],
                            "failed",
                            os.path.join(out_dir, specs[i].name),
                            attempts=resources.retries + 1,
                            error=f"{type(e).__name__} after {resources.retries + 1} attempts: {first}",
                        )
                    progress.started.pop(specs[i].name, None)
                    _count(rows[i], progress)
                    say(_describe(rows[i], i + 1, len(specs)))
                # a run is running once its task has written to its log in this batch
                for i in refs.values():
                    log_path = os.path.join(out_dir, specs[i].name, LOG_NAME)
                    if (
                        specs[i].name not in progress.started
                        and os.path.exists(log_path)
                        and os.path.getmtime(log_path) >= t0 - 1
                    ):
                        progress.started[specs[i].name] = time.time()
                progress.running = len(progress.started)
                progress.slots = max(progress.slots, progress.running)
                progress.show()
        except KeyboardInterrupt:
            # Ray raises KeyboardInterrupt in each running task: the training ends its step and checkpoints
            say("interrupted: stopping the runs (each saves a checkpoint to resume from)")
            for ref in refs:
                ray.cancel(ref)
            ray.wait(list(refs), num_returns=len(refs), timeout=120)
            raise
    finally:
        if started:
            ray.shutdown()


SUMMARY_COLUMNS = [
    "name",
    "status",
    "prompt",
    "image",
    "preset",
    "variant",
    "seed",
    "error",
    "total_seconds",
    "steps",
    "steps_per_second",
    "wall_seconds",
    "attempts",
    "host",
    "node",
    "log",
]


def write_summary(out_dir: str, rows: list[dict], info: dict | None = None) -> None:
    """``summary.json`` (the rows as they are, with ``info`` and the counts) and ``summary.csv`` (one line a run;
    scores, where a run was judged, as columns of their own)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed", "interrupted")}
    os.makedirs(out_dir, exist_ok=True)
    atomic_write_text(
        os.path.join(out_dir, "summary.json"),
        json.dumps({**(info or {}), "counts": counts, "runs": rows}, indent=1, default=float),
    )
    score_keys = list(dict.fromkeys(k for r in rows for k in (r.get("scores") or {})))
    columns = [c for c in SUMMARY_COLUMNS if any(c in r for r in rows)] + score_keys
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**r, **(r.get("scores") or {})})
    atomic_write_text(os.path.join(out_dir, "summary.csv"), buf.getvalue())
