"""Run a list of training jobs into the run store: skip what is done, resume what was killed, in parallel.

API. `Job(config: RunConfig, experiment: str, cell: str, phase: str)` is one run to have in the
store, tagged (see regopt.lab.store). `run_many(jobs, store, workers=1, progress=True) ->
list[dict]` returns the jobs' summaries (engine.fit's summary dicts) in job order. For each job,
in this order of preference:
    skip    a finished run with the same config_hash, experiment, cell and phase exists: its
            stored summary is returned, nothing is trained;
    copy    a finished run with the same config_hash exists elsewhere in the same experiment (another
            cell or phase; or an earlier job of this list trains it): training is deterministic
            given the config, so the run is not trained twice but copied into a new run with this
            job's tags (metrics rows, final weights, summary with "reused_from": the source run id).
            This is how compare's seed-0 "final" run reuses the winning seed-0 "tune" run;
    resume  a "running" or "failed" run with the same config_hash, experiment, cell and phase has a
            checkpoint: fit(..., resume=True) continues it (a killed compare picks up where it was);
    run     otherwise: a new run.
A job listed twice (same config and tags) is trained once; both get its summary.
`plan_jobs(jobs, store) -> list[Plan]` tells what run_many would do (Plan: job, action, run_id,
source), without training; compare uses it for its budget line and --dry-run.
workers > 1 runs jobs in that many processes (multiprocessing "spawn" context: a script that calls
run_many needs the usual `if __name__ == "__main__":` guard); each process
sets torch.set_num_threads(max(1, cpu_count // workers)) unless the job's config fixes `threads`.
Results do not depend on the worker count: every run is seeded by its config alone (measured here:
bitwise-equal summaries with 1 and 2 threads for the MLPs of the tests). progress=True shows one
rich progress bar for the whole list (epochs done / to do, with an ETA) on a terminal, and one line
per finished job otherwise. The worker processes stay up (idle) after run_many returns, for the next
call with the same worker count; `close_worker_pool()` ends them (also done at exit). While run_many works, it holds an exclusive lock on
<store root>/.run_many.lock: a second compare or claims on the same store is refused (UserError)
rather than resuming runs that are still being trained. An error in a job stops the
remaining ones (jobs already running finish and stay in the store) and is raised.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import concurrent.futures.process
import contextlib
import fcntl
import multiprocessing
import os
import queue as queue_module
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from regopt.errors import CheckpointError, ConfigError, UserError
from regopt.lab.config import RunConfig
from regopt.lab.store import RunStore, config_hash

__all__ = ["Job", "Plan", "run_many", "plan_jobs", "threads_per_worker", "close_worker_pool", "ACTIONS"]

ACTIONS = ("skip", "copy", "resume", "run", "same")
LOCK_NAME = ".run_many.lock"
POLL_S = 0.2


@dataclass(frozen=True)
class Job:
    """One run to have in the store: its config and its experiment / cell / phase tags."""

    config: RunConfig
    experiment: str
    cell: str
    phase: str

    @property
    def tags(self) -> dict[str, str]:
        return {"experiment": self.experiment, "cell": self.cell, "phase": self.phase}

    @property
    def config_hash(self) -> str:
        return config_hash(self.config.to_dict())

    def describe(self) -> str:
        return f"{self.cell} [{self.phase}] lr {self.config.lr:g} seed {self.config.seed}"


@dataclass
class Plan:
    """What run_many does for one job. action: skip | copy | resume | run | same.

    run_id: the stored run (skip), the run to continue (resume); None for run and copy (a new
    run). source: for copy, the finished run id to copy (str) or the index of an earlier job of
    the list that trains the config (int); for same, the index of the identical earlier job.
    """

    job: Job
    action: str
    run_id: str | None = None
    source: str | int | None = None


# -- planning -----------------------------------------------------------------------------------


def plan_jobs(jobs: Iterable[Job], store: RunStore) -> list[Plan]:
    """For each job, what run_many would do (see the module docstring), reading only the store."""
    jobs = list(jobs)
    stored: dict[str, list[dict[str, Any]]] = {}
    for experiment in dict.fromkeys(job.experiment for job in jobs):
        stored[experiment] = store.list_runs(experiment=experiment)
    plans: list[Plan] = []
    trained_here: dict[tuple[str, str], int] = {}  # (experiment, hash) -> index of the job that trains it
    seen: dict[tuple[str, str, str, str], int] = {}
    for index, job in enumerate(jobs):
        digest = job.config_hash
        key = (digest, job.experiment, job.cell, job.phase)
        if key in seen:
            plans.append(Plan(job, "same", source=seen[key]))
            continue
        seen[key] = index
        same_config = [run for run in stored[job.experiment] if run["config_hash"] == digest]
        exact = [run for run in same_config if (run["cell"], run["phase"]) == (job.cell, job.phase)]
        finished = [run for run in exact if run["status"] == "finished"]
        elsewhere = [run for run in same_config if run["status"] == "finished"]
        resumable = [run for run in exact if run["status"] != "finished"
                     and store.checkpoint_path(run["run_id"]).is_file()]
        if finished:
            plans.append(Plan(job, "skip", run_id=finished[-1]["run_id"]))
        elif elsewhere:
            plans.append(Plan(job, "copy", source=elsewhere[-1]["run_id"]))
        elif resumable:
            latest = max(resumable, key=lambda run: (run["epochs_logged"], run["updated"]))
            plans.append(Plan(job, "resume", run_id=latest["run_id"]))
            trained_here.setdefault((job.experiment, digest), index)
        elif (job.experiment, digest) in trained_here:
            plans.append(Plan(job, "copy", source=trained_here[(job.experiment, digest)]))
        else:
            plans.append(Plan(job, "run"))
            trained_here[(job.experiment, digest)] = index
    return plans


def threads_per_worker(workers: int) -> int:
    """torch threads for each of `workers` processes: the usable CPUs divided between them."""
    return max(1, _cpu_count() // workers)


# -- running ------------------------------------------------------------------------------------


def run_many(jobs: Iterable[Job], store: RunStore, workers: int = 1, progress: bool = True) -> list[dict]:
    """Have every job's run finished in the store; return their summaries in job order."""
    jobs = list(jobs)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if not jobs:
        return []
    with _exclusive(store):
        plans = plan_jobs(jobs, store)
        _abandon_stale_runs(plans, store)
        to_train = [index for index, plan in enumerate(plans) if plan.action in ("run", "resume")]
        summaries: dict[int, dict] = {}
        for index, plan in enumerate(plans):
            if plan.action == "skip":
                summaries[index] = store.get_run(plan.run_id)["summary"]
        resumed_epochs = {index: store.get_run(plans[index].run_id)["epochs_logged"]
                          for index in to_train if plans[index].action == "resume"}
        bar = _Bar(plans, to_train, resumed_epochs, progress)
        try:
            if workers == 1 or len(to_train) <= 1:
                summaries.update(_train_here(plans, to_train, store, workers, bar))
            else:
                summaries.update(_train_in_processes(plans, to_train, store, workers, bar))
        finally:
            bar.close()
        for index, plan in enumerate(plans):
            if plan.action == "copy":
                source = plan.source if isinstance(plan.source, str) else summaries[plan.source]["run_id"]
                summaries[index] = _copy_run(store, source, plan.job)
        for index, plan in enumerate(plans):
            if plan.action == "same":
                summaries[index] = summaries[plan.source]
    return [summaries[index] for index in range(len(jobs))]


def _train_here(plans: list[Plan], indices: list[int], store: RunStore, workers: int, bar) -> dict[int, dict]:
    """Train the jobs one after the other in this process (threads: the whole share of the CPUs)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_worker(workers))
    try:
        results = {}
        for index in indices:
            plan = plans[index]
            results[index] = _train(plan.job.config, store, plan.run_id, plan.job.tags,
                                    _EpochReporter(index, bar.report))
            bar.job_done(index, results[index])
        return results
    finally:
        torch.set_num_threads(threads)


def _train_in_processes(plans: list[Plan], indices: list[int], store: RunStore, workers: int,
                        bar) -> dict[int, dict]:
    """Train the jobs in `workers` spawned processes; progress comes back through a queue."""
    global _generation
    _generation += 1
    executor, events = _worker_pool(workers)
    results: dict[int, dict] = {}
    try:
        pending = {
            executor.submit(_train_in_worker, _generation, index, plans[index].job.config.to_dict(),
                            str(store.root), plans[index].run_id, plans[index].job.tags): index
            for index in indices
        }
        while pending:
            done, _ = concurrent.futures.wait(pending, timeout=POLL_S,
                                              return_when=concurrent.futures.FIRST_COMPLETED)
            _drain(events, bar)
            for future in done:
                index = pending.pop(future)
                try:
                    results[index] = future.result()  # a job's error is raised here
                except concurrent.futures.process.BrokenProcessPool as error:
                    raise RuntimeError(
                        "a worker process died (killed, out of memory, or a script that calls "
                        "run_many without `if __name__ == '__main__':`, which spawned workers need)"
                    ) from error
                bar.job_done(index, results[index])
        _drain(events, bar)
    except BaseException:
        close_worker_pool()  # running jobs finish (and stay in the store); none start
        raise
    return results


# The worker processes outlive one run_many call: compare calls it twice (tune, final) and claims
# once per claim, and starting a spawned process (importing torch) costs seconds. They are idle
# between calls, and shut down at exit or when the worker count changes.
_pool: tuple[int, concurrent.futures.ProcessPoolExecutor, Any] | None = None
_generation = 0  # tags progress events, so a late event of an earlier call is not counted


def _worker_pool(workers: int) -> tuple[concurrent.futures.ProcessPoolExecutor, Any]:
    global _pool
    if _pool is not None and _pool[0] == workers:
        return _pool[1], _pool[2]
    close_worker_pool()
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=workers, mp_context=context, initializer=_init_worker,
        initargs=(threads_per_worker(workers), events, os.getpid()),
    )
    _pool = (workers, executor, events)
    return executor, events


def close_worker_pool() -> None:
    """Shut the worker processes down (waiting for running jobs); run_many starts new ones."""
    global _pool
    if _pool is not None:
        _, executor, _ = _pool
        _pool = None
        executor.shutdown(wait=True, cancel_futures=True)


atexit.register(close_worker_pool)


def _drain(events, bar) -> None:
    while True:
        try:
            generation, *event = events.get_nowait()
        except queue_module.Empty:
            return
        if generation == _generation:
            bar.report(*event)


def _train(config: RunConfig, store: RunStore, run_id: str | None, tags: dict[str, str], progress) -> dict:
    from regopt.engine import fit

    if run_id is not None:
        return fit(config, store, run_id=run_id, resume=True, progress=progress)
    return fit(config, store, progress=progress, tags=tags)


# -- the worker processes -----------------------------------------------------------------------

_worker_events = None


def _init_worker(threads: int, events, parent_pid: int) -> None:
    """Set up a spawned worker: its torch threads, the progress queue, and exit if the parent dies
    (a compare killed with SIGKILL must not leave workers training runs the next compare resumes)."""
    global _worker_events
    import torch

    torch.set_num_threads(threads)
    _worker_events = events
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)


def _train_in_worker(generation: int, index: int, config: dict, root: str, run_id: str | None,
                     tags: dict[str, str]) -> dict:
    reporter = _EpochReporter(index, lambda *event: _worker_events.put((generation, *event)))
    return _train(RunConfig.from_dict(config), RunStore(root), run_id, tags, reporter)


class _EpochReporter:
    """engine.Progress that forwards (job index, kind, epoch) events: "start" and "epoch"."""

    def __init__(self, index: int, send):
        self.index, self.send = index, send

    def start(self, run_id, first_epoch, epochs, batches_per_epoch) -> None:
        self.send(self.index, "start", first_epoch - 1)

    def batch(self, *args) -> None:
        pass

    def epoch(self, row) -> None:
        self.send(self.index, "epoch", row["epoch"])


# -- copies and stale runs ----------------------------------------------------------------------


def _copy_run(store: RunStore, source_id: str, job: Job) -> dict:
    """A new finished run with `job`'s tags holding the finished run `source_id`'s results."""
    source = store.get_run(source_id)
    run_id = store.create_run(job.config.to_dict(), **job.tags)
    for row in store.metrics(source_id):
        store.log_epoch(run_id, row)
    with contextlib.suppress(CheckpointError):  # a run stored without final weights has none to copy
        store.save_model(run_id, store.load_model(source_id))
    summary = {**source["summary"], "run_id": run_id, "reused_from": source_id}
    store.finish_run(run_id, summary)
    return summary


def _abandon_stale_runs(plans: list[Plan], store: RunStore) -> None:
    """Runs of a job that will be run or copied afresh, left "running" without a checkpoint (killed
    in their first epoch): mark them failed so that readers do not take them for live runs. Safe
    under the lock: tagged runs are only ever trained by run_many."""
    for plan in plans:
        if plan.action not in ("run", "copy"):
            continue
        job = plan.job
        for run in store.list_runs(status="running", config_hash=job.config_hash, **job.tags):
            store.fail_run(run["run_id"], "abandoned before its first checkpoint; trained again as a new run")


@contextlib.contextmanager
def _exclusive(store: RunStore) -> Iterator[None]:
    store.root.mkdir(parents=True, exist_ok=True)
    store.init()  # make the database once, before any worker writes to it
    path = store.root / LOCK_NAME
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"another regopt compare or claims is writing to {store.root} "
                            f"(it holds {path}); wait for it to end or use another --out") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- the progress bar ---------------------------------------------------------------------------


class _Bar:
    """One bar for the whole list: epochs trained out of epochs to train, with an ETA. On a
    non-terminal (a log, a test), one line per finished job instead. progress=False: silent."""

    def __init__(self, plans: list[Plan], to_train: list[int], resumed_epochs: dict[int, int],
                 enabled: bool):
        self.plans, self.enabled = plans, enabled
        self.total_jobs = len(to_train)
        self.jobs_done = 0
        # epochs done per job to train; a resumed run's earlier epochs count as done from the start
        # (given to add_task, so they do not skew the speed behind the ETA)
        self.done_epochs = {index: resumed_epochs.get(index, 0) for index in to_train}
        self.bar = self.console = None
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True)
        if not self.console.is_terminal:  # a log: long lines rather than an 80-column wrap
            self.console = Console(stderr=True, width=200)
        counts = {action: sum(plan.action == action for plan in plans) for action in ACTIONS}
        self.console.print(
            f"{len(plans)} runs: {counts['run']} to train, {counts['resume']} to resume, "
            f"{counts['skip']} done, {counts['copy'] + counts['same']} reused", highlight=False,
            markup=False)
        if self.console.is_terminal and to_train:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("epochs"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=self.console, transient=True)
            total = sum(plans[index].job.config.epochs for index in to_train)
            self.task = self.bar.add_task(self._description(), total=total, completed=self._completed())
            self.bar.start()

    def report(self, index: int, kind: str, epoch: int) -> None:
        """kind "start" (epoch = epochs already done) or "epoch" (epoch = the one just done)."""
        self.done_epochs[index] = max(self.done_epochs[index], epoch)
        if self.bar is not None:
            self.bar.update(self.task, completed=self._completed())

    def job_done(self, index: int, summary: dict) -> None:
        self.jobs_done += 1
        self.done_epochs[index] = self.plans[index].job.config.epochs  # early stopping ends sooner
        if self.bar is not None:
            self.bar.update(self.task, completed=self._completed(), description=self._description())
        elif self.enabled:
            job = self.plans[index].job
            self.console.print(
                f"[{self.jobs_done}/{self.total_jobs}] {job.describe()}: "
                f"val acc {_number(summary.get('best_val_accuracy'))} at epoch {summary.get('best_epoch')}, "
                f"test acc {_number(summary.get('test_accuracy'))} "
                f"({_number(summary.get('train_seconds'), '.1f')} s)", highlight=False, markup=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()

    def _completed(self) -> int:
        return sum(self.done_epochs.values())

    def _description(self) -> str:
        return f"runs {self.jobs_done}/{self.total_jobs}"


def _number(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)

