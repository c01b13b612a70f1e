"""Storage and fault tolerance for every search strategy: one Optuna study, one pattern per training run.

A study lives in an SQLite file in the run folder (default), any RDB URL, or an Optuna journal file
(for a shared filesystem without a database server). The canonical pattern is each trial's key
(user attr "pattern"); a pattern is trained at most once per study, even with several worker
processes running the same command on the same storage, and a killed worker loses nothing that
was told.

Duplicate handling (several workers, one study). Each trial goes through three steps:
  1. claim: `propose(trial)` gives the pattern, stored as the user attr "pattern";
  2. decide: the trial waits until every lower-numbered live RUNNING trial has decided its "role",
     then decides its own from what is in storage:
       "cached"    a COMPLETE result for the pattern exists: told COMPLETE with those values
                   (user attrs cached=True, cached_from=<trial number>), evaluate is not called;
                   a pattern whose evaluation raised is told FAIL again, not retried;
       "duplicate" a lower-numbered live trial is evaluating the pattern right now: told PRUNED
                   (duplicate_of=<its number>) at once, so the worker moves on rather than idling
                   for a whole training run; the sampler sees the real value on a later proposal;
       "budget"    the study-wide `max_trials` is reached counting evaluations in flight: PRUNED;
       "evaluate"  otherwise: this trial trains the pattern.
     A propose that raises `Exhausted` (a fixed list with every pattern taken) ends this worker's
     loop: the trial is told PRUNED with role "exhausted".
     Decisions are serialised by trial number (storage writes are ordered), so two trials can
     never both decide "evaluate" for one pattern; the wait is only for lower trials still in
     `propose`, never for a training run.
  3. evaluate and tell, one tell per trial (committed when `tell` returns).
Liveness: a background thread writes the user attr "heartbeat" (unix time) every `heartbeat_s`;
a RUNNING trial whose worker is gone (same host and its process no longer exists, or no heartbeat
for `stale_after_s`) is told FAIL by whichever worker notices, and its pattern becomes free again.

Budget: `max_trials` counts evaluations (trials with role "evaluate" that finished COMPLETE or
FAIL from evaluate); cached, duplicate, interrupted and lost trials train nothing and are not
counted, so rerunning the same command after a crash finishes the same number of training runs.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from composer.errors import ConfigError
from composer.pattern import parse_pattern

log = logging.getLogger(__name__)

_RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_JOURNAL_SUFFIXES = (".log", ".journal")
# Attributes this module writes; evaluate's extra metrics may not use these names.
class Exhausted(Exception):
    """Raised by a `propose` with nothing left to offer (every listed pattern finished or being
    trained by a live worker): this worker stops instead of answering trials from the cache."""


RESERVED_ATTRS = frozenset({"pattern", "heartbeat", "worker", "role", "cached", "cached_from",
                            "duplicate_of", "error", "failure", "reason"})


# ----------------------------------------------------------------------------------------- storage

def resolve_storage(storage: str | Path | None, *, run_dir: Path) -> optuna.storages.BaseStorage:
    """The Optuna storage that a `--storage` value names; bad values raise a one-line ConfigError."""
    if storage is None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return _sqlite(f"sqlite:///{(run_dir / 'study.db').resolve()}")
    text = str(storage).strip()
    if not text:
        raise ConfigError("empty storage: give an sqlite:///, postgresql:// or mysql:// URL, or a .log/.journal file")
    if text.startswith("journal:"):
        path = text[len("journal:"):]
        if not path:
            raise ConfigError(f"storage {text!r}: 'journal:' needs a file path after it")
        return _journal(Path(path))
    match = _URL.match(text)
    if match:
        scheme = match.group(1).lower()
        if scheme.split("+")[0] not in _RDB_SCHEMES:
            raise ConfigError(f"storage {text!r}: unknown URL scheme {scheme!r}; "
                              f"use one of {', '.join(s + '://' for s in _RDB_SCHEMES)} or a .log/.journal file")
        if scheme.startswith("sqlite"):
            return _sqlite(text)
        try:
            return RDBStorage(text)
        except Exception as exc:  # a driver missing or a server unreachable: one line, not a traceback
            raise ConfigError(f"storage {text!r}: cannot open: {_one_line(exc)}") from exc
    if text.endswith(_JOURNAL_SUFFIXES):
        return _journal(Path(text))
    raise ConfigError(f"storage {text!r}: not a URL (sqlite:///, postgresql://, mysql://) nor a journal file "
                      f"(ending in .log or .journal, or prefixed 'journal:')")


def _sqlite(url: str) -> RDBStorage:
    path = url.split("://", 1)[1][1:]  # sqlite:///relative or sqlite:////absolute
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    # Several workers on one file: wait for the write lock instead of failing with "database is locked".
    kwargs = {"connect_args": {"timeout": 120}}
    for attempt in range(5):  # workers starting together race to create the tables
        try:
            return RDBStorage(url, engine_kwargs=kwargs)
        except Exception as exc:
            if attempt == 4:
                raise ConfigError(f"storage {url!r}: cannot open: {_one_line(exc)}") from exc
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _journal(path: Path) -> JournalStorage:
    path.parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))


def open_study(*, name: str, storage: str | Path | None, run_dir: Path, sampler: optuna.samplers.BaseSampler | None,
               directions: Sequence[str] = ("maximize",)) -> optuna.Study:
    """Create the study `name`, or resume it with all its trials if the storage already holds it."""
    backend = resolve_storage(storage, run_dir=run_dir)
    for attempt in range(5):  # workers starting together race to create the study
        try:
            return optuna.create_study(study_name=name, storage=backend, sampler=sampler,
                                       directions=list(directions), load_if_exists=True)
        except optuna.exceptions.DuplicatedStudyError:
            time.sleep(0.2 * (attempt + 1))
        except ValueError as exc:  # e.g. directions differ from the stored study's
            raise ConfigError(f"study {name!r}: {_one_line(exc)}") from exc
    return optuna.load_study(study_name=name, storage=backend, sampler=sampler)


# ----------------------------------------------------------------------------------------- queries

def completed_results(study: optuna.Study) -> dict[str, dict[str, Any]]:
    """Pattern -> its result ("values", "score", "trial" and the extra metrics), from evaluated COMPLETE trials."""
    return _completed(study.get_trials(deepcopy=False))


def failed_patterns(study: optuna.Study) -> dict[str, str]:
    """Pattern -> why its evaluation failed (evaluate raised); patterns with a result, and failures
    before the study's retry cutoff (`retry_failures`), are left out."""
    return _failed(study.get_trials(deepcopy=False), retry_cutoff(study))


RETRY_ATTR = "retry_failed_before"


def retry_failures(study: optuna.Study) -> None:
    """Every failure recorded so far becomes retryable: a later proposal of its pattern trains it
    again instead of answering with the failure (the study keeps the failed trial, which no longer
    counts towards max_trials: a list study of n patterns trains its n again). For failures that were
    not the pattern's fault (a killed node, a library race); a failure after this call is final again."""
    study.set_user_attr(RETRY_ATTR, time.time())


def retry_cutoff(study: optuna.Study) -> float | None:
    return study.user_attrs.get(RETRY_ATTR)


def final_failure(t: FrozenTrial, cutoff: float | None) -> bool:
    """Whether `t` failed in evaluate (not interrupted, not lost) after the retry cutoff: the
    pattern's result, answered from the cache like a score."""
    if t.state != TrialState.FAIL or t.user_attrs.get("role") != "evaluate" or t.user_attrs.get("failure") != "error":
        return False
    return cutoff is None or t.datetime_complete is None or t.datetime_complete.timestamp() >= cutoff


def count_evaluations(study: optuna.Study) -> int:
    """Training runs that finished (COMPLETE, or FAIL from evaluate after the retry cutoff): what
    `max_trials` counts."""
    cutoff = retry_cutoff(study)
    return sum(_is_evaluation(t, cutoff) for t in study.get_trials(deepcopy=False))


def _completed(trials: Sequence[FrozenTrial]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        if t.state == TrialState.COMPLETE and attrs.get("role") == "evaluate" and attrs.get("pattern") not in out:
            metrics = {k: v for k, v in attrs.items() if k not in RESERVED_ATTRS}
            out[attrs["pattern"]] = {"values": list(t.values), "score": t.values[0] if len(t.values) == 1 else list(t.values),
                                     "trial": t.number, **metrics}
    return out


def _failed(trials: Sequence[FrozenTrial], cutoff: float | None) -> dict[str, str]:
    done = _completed(trials)
    return {t.user_attrs["pattern"]: t.user_attrs.get("error", "failed")
            for t in sorted(trials, key=lambda t: t.number) if final_failure(t, cutoff) and t.user_attrs["pattern"] not in done}


def _is_evaluation(t: FrozenTrial, cutoff: float | None) -> bool:
    return (t.state == TrialState.COMPLETE and t.user_attrs.get("role") == "evaluate") or final_failure(t, cutoff)


# ----------------------------------------------------------------------------------------- the loop

class _Heartbeat:
    """Writes the user attr "heartbeat" now and every `interval` seconds until stopped."""

    def __init__(self, trial: optuna.Trial, interval: float) -> None:
        self._trial, self._interval, self._stop = trial, interval, threading.Event()
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("heartbeat", time.time())
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial.number}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._trial.set_user_attr("heartbeat", time.time())
            except Exception as exc:  # storage hiccup: the next beat retries; staleness needs many misses
                log.debug("heartbeat of trial %d failed: %s", self._trial.number, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# A worker writes its identity right after `ask` (milliseconds). A RUNNING trial that has none this
# long after it started belongs to a worker killed in between, and would otherwise block every
# later trial's decision until `stale_after_s`.
UNCLAIMED_GRACE_S = 20.0
STALE_AFTER_S = 300.0  # a RUNNING trial without a heartbeat for this long belongs to a dead worker


def is_lost(t: FrozenTrial, *, stale_after_s: float, now: float) -> bool:
    """A RUNNING trial whose worker is gone: its process is dead (same host), its heartbeat is stale,
    or it never wrote its identity within UNCLAIMED_GRACE_S of starting."""
    worker = t.user_attrs.get("worker", "")
    if not worker and t.datetime_start is not None:
        return now - t.datetime_start.timestamp() > min(UNCLAIMED_GRACE_S, stale_after_s)
    host, _, pid = worker.rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass
    beat = t.user_attrs.get("heartbeat")
    if beat is None:  # asked but not yet beating: measure from its start
        beat = t.datetime_start.timestamp() if t.datetime_start else now
    return now - float(beat) > stale_after_s


def running_alive(study: optuna.Study, *, stale_after_s: float = STALE_AFTER_S) -> list[FrozenTrial]:
    """The study's RUNNING trials whose workers are still at work (`is_lost` says which are not)."""
    now = time.time()
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not is_lost(t, stale_after_s=stale_after_s, now=now)]


def _decide(study: optuna.Study, trial: optuna.Trial, pattern: str, *, max_trials: int | None,
            stale_after_s: float, poll_s: float) -> tuple[str, FrozenTrial | None]:
    """This trial's role and the trial it refers to; waits only for lower trials still proposing."""
    while True:
        trials = study.get_trials(deepcopy=False)
        now = time.time()
        lower_running, undecided = [], False
        for t in trials:
            if t.number >= trial.number or t.state != TrialState.RUNNING:
                continue
            if is_lost(t, stale_after_s=stale_after_s, now=now):
                log.warning("trial %d (%s) lost its worker %s; marking it FAIL", t.number,
                            t.user_attrs.get("pattern", "?"), t.user_attrs.get("worker", "?"))
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
                undecided = True  # re-read: its pattern is free again
                continue
            if "role" not in t.user_attrs:
                undecided = True
            lower_running.append(t)
        if undecided:
            _stop_if_interrupted()
            time.sleep(poll_s)
            continue
        cutoff = retry_cutoff(study)
        for t in sorted(trials, key=lambda t: t.number):
            if t.user_attrs.get("pattern") == pattern and t.user_attrs.get("role") == "evaluate" and t.number != trial.number:
                if t.state == TrialState.COMPLETE or final_failure(t, cutoff):
                    return "cached", t
        for t in lower_running:
            if t.user_attrs.get("pattern") == pattern and t.user_attrs["role"] == "evaluate":
                return "duplicate", t
        if max_trials is not None:
            in_flight = sum(t.user_attrs["role"] == "evaluate" for t in lower_running)
            if sum(_is_evaluation(t, cutoff) for t in trials) + in_flight >= max_trials:
                return "budget", None
        return "evaluate", None


def run_trials(study: optuna.Study, *, propose: Callable[[optuna.Trial], str], evaluate: Callable[[str], dict],
               n_trials: int, max_trials: int | None = None, heartbeat_s: float = 30.0, stale_after_s: float = STALE_AFTER_S,
               poll_s: float = 0.2) -> list[FrozenTrial]:
    """Ask, propose, evaluate (at most once per pattern in the study), tell; returns this call's trials.

    Stops after `n_trials` trials of this call, or once the study holds `max_trials` evaluations.
    `evaluate(pattern)` returns {"score": float, or a sequence for a multi-objective study, **metrics}.
    An exception from evaluate (divergence, CUDA OOM, a bug) fails that trial with a one-line reason
    and the loop goes on; KeyboardInterrupt fails the trial in flight as "interrupted", then propagates.
    A Ctrl-C in the main thread raises it at the training loop's next step, not where it lands (`_ctrl_c_noted`).
    """
    if n_trials < 0 or (max_trials is not None and max_trials < 0):
        raise ConfigError(f"n_trials={n_trials} and max_trials={max_trials} must be >= 0")
    with _ctrl_c_noted():
        return _run_trials(study, propose=propose, evaluate=evaluate, n_trials=n_trials, max_trials=max_trials,
                           heartbeat_s=heartbeat_s, stale_after_s=stale_after_s, poll_s=poll_s)


_CTRL_C = threading.Event()  # a Ctrl-C reached this process during run_trials


@contextmanager
def _ctrl_c_noted() -> Iterator[None]:
    """The first SIGINT is noted, not raised where it lands: every training loop of the process raises
    KeyboardInterrupt at its next step (its trial: "interrupted"), the loops check the note between and
    before trials, and it is raised as run_trials returns. Raised where it lands, it could leave a lock
    held that another thread needs to finish (after an acquire, before its `try`: concurrent.futures.wait
    in evaluator.parallel's wait for its runs, logging.Handler.handle beside a second evaluation's
    thread), and the main thread then joined that thread forever (a search hung after Ctrl-C on a loaded
    2-core machine). A second SIGINT raises at once (a long compile or final evaluation). The note also
    outlives a KeyboardInterrupt that Python drops in a weakref callback or __del__ (seen 2026-12-04)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # another thread: the main thread's note stops it too
        return
    _CTRL_C.clear()  # a note of an earlier call
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # a handler someone installed, or SIGINT ignored: left as it is
        return
    from composer.engine.graphs import INTERRUPT  # here, not in the handler: it runs between any two bytecodes

    signal.signal(signal.SIGINT, _NoteCtrlC(INTERRUPT, say=multiprocessing.parent_process() is None))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if _CTRL_C.is_set():
            INTERRUPT.clear()  # a caller that runs threads sets it again while it joins them (search.runner)
    _stop_if_interrupted()  # noted during the last trial: the command still ends


class _NoteCtrlC:
    """run_trials' SIGINT handler in the main thread: the first Ctrl-C is noted, a second raises at once."""

    def __init__(self, interrupt: threading.Event, *, say: bool) -> None:
        self.interrupt = interrupt  # composer.engine.graphs.INTERRUPT: every training loop stops at its next step
        self.say = say  # a spawned worker's Ctrl-C (the terminal's, beside its parent's) goes unsaid

    def note(self) -> None:
        _CTRL_C.set()
        self.interrupt.set()

    def __call__(self, signum: int, frame: Any) -> None:
        if _CTRL_C.is_set():
            signal.default_int_handler(signum, frame)
        self.note()  # then said with os.write, not logging: the frame interrupted may hold logging's lock
        if self.say:
            os.write(2, b"Ctrl-C: the evaluations in flight stop at their next training step (Ctrl-C again: at once)\n")


def stop_at_next_step(signum: int, frame: Any) -> None:
    """A signal handler for a spawned worker's stop (its parent's Ctrl-C, forwarded): within run_trials, noted
    as a first Ctrl-C is, however many came (the terminal's Ctrl-C reached the worker too); else raised."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, _NoteCtrlC):
        handler.note()
    elif callable(handler):
        handler(signal.SIGINT, frame)  # as a Ctrl-C: Python's raises, _claim's holds it until `ask` returns
    else:
        raise KeyboardInterrupt  # SIGINT ignored (`nohup`): the parent's stop is still one


def _stop_if_interrupted() -> None:
    if _CTRL_C.is_set():
        raise KeyboardInterrupt


def _run_trials(study: optuna.Study, *, propose: Callable[[optuna.Trial], str], evaluate: Callable[[str], dict],
                n_trials: int, max_trials: int | None, heartbeat_s: float, stale_after_s: float,
                poll_s: float) -> list[FrozenTrial]:
    finished: list[FrozenTrial] = []
    for _ in range(n_trials):
        _stop_if_interrupted()
        if max_trials is not None and count_evaluations(study) >= max_trials:
            log.info("study %s has %d evaluations (max_trials=%d): done", study.study_name, max_trials, max_trials)
            break
        trial, heartbeat, interrupted = _claim(study, heartbeat_s)
        try:
            if interrupted:
                raise KeyboardInterrupt
            frozen, role = _run_one(study, trial, propose=propose, evaluate=evaluate, max_trials=max_trials,
                                    stale_after_s=stale_after_s, poll_s=poll_s, heartbeat=heartbeat)
        except KeyboardInterrupt:
            heartbeat.stop()
            try:
                trial.set_user_attr("failure", "interrupted")
                trial.set_user_attr("error", "interrupted")
                study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            except UpdateFinishedTrialError:  # Ctrl-C came just after its tell: it stays as told
                raise KeyboardInterrupt from None
            log.warning("trial %d: interrupted; told FAIL. Rerun the same command to resume.", trial.number)
            raise
        finally:
            heartbeat.stop()
        finished.append(frozen)
        _log_trial(study, frozen)
        if role in ("budget", "exhausted"):
            break
    return finished


def _claim(study: optuna.Study, heartbeat_s: float) -> tuple[optuna.Trial, _Heartbeat, bool]:
    """A new trial with this worker's name on it; Ctrl-C meanwhile is held until both are stored.

    `ask` commits the RUNNING trial before it returns: an interrupt in between would leave a trial
    no worker owns (other workers would wait UNCLAIMED_GRACE_S for it). Held only where SIGINT
    raises KeyboardInterrupt (Python's handler, or run_trials' at a second Ctrl-C; main thread): an
    ignored SIGINT stays ignored. run_trials' handler notes a held one as it would have.
    """
    held: list[int] = []
    previous = signal.getsignal(signal.SIGINT)
    hold = threading.current_thread() is threading.main_thread() and (  # else Ctrl-C raises nothing here
        previous is signal.default_int_handler or isinstance(previous, _NoteCtrlC))
    if hold:
        signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        trial = study.ask()
        heartbeat = _Heartbeat(trial, heartbeat_s)
    finally:
        if hold:
            signal.signal(signal.SIGINT, previous)
    if held and isinstance(previous, _NoteCtrlC):
        previous.note()
    return trial, heartbeat, bool(held)


def _run_one(study: optuna.Study, trial: optuna.Trial, *, propose: Callable[[optuna.Trial], str],
             evaluate: Callable[[str], dict], max_trials: int | None, stale_after_s: float, poll_s: float,
             heartbeat: _Heartbeat) -> tuple[FrozenTrial, str]:
    try:
        pattern = parse_pattern(propose(trial))
    except Exhausted as exc:
        trial.set_user_attr("role", "exhausted")
        trial.set_user_attr("reason", str(exc))
        heartbeat.stop()
        return study.tell(trial, state=TrialState.PRUNED), "exhausted"
    except Exception as exc:  # a strategy bug or an invalid pattern: record it and let the role wait of later trials go on
        return _fail(study, trial, heartbeat, role="propose", failure="error", reason=f"propose: {_one_line(exc)}"), "fail"
    trial.set_user_attr("pattern", pattern)
    role, other = _decide(study, trial, pattern, max_trials=max_trials, stale_after_s=stale_after_s, poll_s=poll_s)
    trial.set_user_attr("role", role)
    if role == "cached":
        assert other is not None
        trial.set_user_attr("cached", True)
        trial.set_user_attr("cached_from", other.number)
        heartbeat.stop()
        if other.state == TrialState.COMPLETE:
            return study.tell(trial, other.values), role
        trial.set_user_attr("failure", "cached")
        trial.set_user_attr("error", other.user_attrs.get("error", "failed"))
        return study.tell(trial, state=TrialState.FAIL), role
    if role == "duplicate":
        assert other is not None
        trial.set_user_attr("duplicate_of", other.number)
        trial.set_user_attr("reason", f"duplicate: trial {other.number} is evaluating {pattern} now")
        heartbeat.stop()
        return study.tell(trial, state=TrialState.PRUNED), role
    if role == "budget":
        trial.set_user_attr("reason", f"max_trials={max_trials} reached counting evaluations in flight")
        heartbeat.stop()
        return study.tell(trial, state=TrialState.PRUNED), role
    _stop_if_interrupted()  # before an evaluation's setup
    try:
        result = evaluate(pattern)
        values, metrics = _check_result(result, n_objectives=len(study.directions))
    except Exception as exc:
        return _fail(study, trial, heartbeat, role="evaluate", failure="error", reason=_one_line(exc)), "fail"
    for key, value in metrics.items():
        trial.set_user_attr(key, value)
    heartbeat.stop()
    return study.tell(trial, values), role


def _fail(study: optuna.Study, trial: optuna.Trial, heartbeat: _Heartbeat, *, role: str, failure: str,
          reason: str) -> FrozenTrial:
    trial.set_user_attr("role", role)
    trial.set_user_attr("failure", failure)
    trial.set_user_attr("error", reason)
    heartbeat.stop()
    return study.tell(trial, state=TrialState.FAIL)


def _check_result(result: Any, *, n_objectives: int) -> tuple[list[float], dict[str, Any]]:
    """Validate evaluate's return: values for `tell` and JSON-storable extra metrics."""
    if not isinstance(result, dict) or "score" not in result:
        raise TypeError(f"evaluate must return a dict with 'score', got {type(result).__name__}")
    score = result["score"]
    values = [float(v) for v in score] if isinstance(score, (list, tuple)) else [float(score)]
    if len(values) != n_objectives:
        raise ValueError(f"evaluate returned {len(values)} score value(s) for a {n_objectives}-objective study")
    if not all(math.isfinite(v) for v in values):
        raise FloatingPointError(f"non-finite score {score!r} (diverged?)")
    metrics: dict[str, Any] = {}
    for key, value in result.items():
        if key == "score":
            continue
        if key in RESERVED_ATTRS:
            raise KeyError(f"evaluate returned metric {key!r}, a name reserved by search.study")
        if hasattr(value, "item"):  # numpy / torch scalars
            value = value.item()
        metrics[key] = value if isinstance(value, (bool, int, float, str, type(None), list, dict)) else str(value)
    return values, metrics


def _log_trial(study: optuna.Study, t: FrozenTrial) -> None:
    attrs = t.user_attrs
    # An evaluated trial is the caller's to report (the search prints a progress line); the rest are ours.
    level = logging.DEBUG if t.state == TrialState.COMPLETE and attrs.get("role") == "evaluate" else logging.INFO
    if not log.isEnabledFor(level):  # the best-so-far below reads every trial back from storage
        return
    pattern = attrs.get("pattern", "?")
    if t.state == TrialState.COMPLETE:
        status = f"score={_fmt(t.values)}" + (f" (cached from trial {attrs['cached_from']})" if attrs.get("cached") else "")
    elif t.state == TrialState.FAIL:
        status = f"FAIL: {attrs.get('error', '?')}"
    else:
        status = f"skipped: {attrs.get('reason', t.state.name)}"
    best = ""
    if len(study.directions) == 1:
        done = completed_results(study)
        if done:
            sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
            top = max(done, key=lambda p: sign * done[p]["values"][0])
            best = f"; best {top} {done[top]['values'][0]:.4g}"
    log.log(level, "trial %d %s %s%s", t.number, pattern, status, best)


def _fmt(values: Sequence[float] | None) -> str:
    if not values:
        return "-"
    return f"{values[0]:.4g}" if len(values) == 1 else "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _one_line(exc: BaseException) -> str:
    message = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
