"""CUDA graphs for the training step, and what lets several runs train at once in one process.

A 16-layer proxy of width 128 launches thousands of tiny kernels per step: eagerly, the host's
launches are the bottleneck and the GPU idles. `StepGraph` captures one whole step (forward,
backward, clipping, fused AdamW) and replays it with one launch per step; runs in threads, each
on its own CUDA stream (`search.evaluator`'s `parallel`), then keep the GPU's SMs busy together.
"""

from __future__ import annotations

import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch

log = logging.getLogger(__name__)

GRAPH_WARMUP = 1  # eager steps before the capture (AdamW's state, cuBLAS workspaces, Triton autotuning): one is enough
INTERRUPT = threading.Event()  # set: every training loop of this process raises KeyboardInterrupt at its next step
_GROUP = threading.local()  # .stop: the event that stops the group of runs this thread trains in (one evaluation's)
_CAPTURE = threading.Lock()  # one capture at a time in a process
_COMPILE = threading.RLock()  # torch.compile is not thread-safe: compiled layers run eagerly in one thread at a time
_WAITED = threading.local()  # .seconds: how long this thread has waited for _CAPTURE and _COMPILE

Batch = tuple[torch.Tensor, torch.Tensor]


@contextmanager
def _held(lock: AbstractContextManager) -> Iterator[None]:
    """`with lock`, the wait counted in this thread's `waited()`."""
    started = time.perf_counter()
    with lock:
        _WAITED.seconds = waited() + time.perf_counter() - started
        yield


def waited() -> float:
    """Seconds this thread has waited so far for another thread's capture or compiled layers: the cost of
    training runs side by side in one process that a run's own time does not show."""
    return getattr(_WAITED, "seconds", 0.0)


def compile_guard(cfg) -> AbstractContextManager:
    """Held while compiled layers run eagerly (compiling, capturing, evaluating); a graph replays outside it."""
    return _held(_COMPILE) if cfg.compile else nullcontext()


@contextmanager
def stop_group(stop: threading.Event) -> Iterator[None]:
    """This thread's training loops also stop at their next step once `stop` is set (another run of the
    same evaluation failed): evaluations side by side in one process stop only their own runs."""
    previous = getattr(_GROUP, "stop", None)
    _GROUP.stop = stop
    try:
        yield
    finally:
        _GROUP.stop = previous


def stop_requested() -> bool:
    """Whether this thread's training loop should stop: the process is interrupted, or its group is."""
    group = getattr(_GROUP, "stop", None)
    return INTERRUPT.is_set() or (group is not None and group.is_set())


class StreamLeases:
    """Streams no other thread of the process holds. torch hands out its streams from a pool of
    POOL_STREAMS per device, round robin (`torch.cuda.Stream()`), so the 33rd thread would share the
    first one's stream: its work would join the other's capture (seen on an H200, 2026-12-05: six
    evaluations of six runs in one process, "Cannot prepare for replay during capturing stage", then
    corrupted targets). A lease draws from the pool until it gets a stream not leased; with all of
    them leased, the thread waits for one to be returned (said once in the log)."""

    POOL_STREAMS = 32  # c10/cuda/CUDAStream.cpp: kStreamsPerPool

    def __init__(self, new_stream: Callable[[object], object]) -> None:
        self._new_stream = new_stream  # device -> a stream of torch's pool (.stream_id)
        self._held: dict[object, set[int]] = {}  # device -> ids of the streams leased now
        self._returned = threading.Condition()
        self._warned = False

    @contextmanager
    def lease(self, device: object) -> Iterator[object]:
        with self._returned:
            held = self._held.setdefault(device, set())
            if len(held) >= self.POOL_STREAMS and not self._warned:
                self._warned = True
                log.warning("more than %d runs at once in one process: the others wait for a stream (torch's "
                            "pool holds %d per device)", self.POOL_STREAMS, self.POOL_STREAMS)
            self._returned.wait_for(lambda: len(held) < self.POOL_STREAMS)
            stream = next(s for s in (self._new_stream(device) for _ in range(self.POOL_STREAMS + 1))
                          if s.stream_id not in held)
            held.add(stream.stream_id)
        try:
            yield stream
        finally:
            with self._returned:
                held.discard(stream.stream_id)
                self._returned.notify()


_STREAMS = StreamLeases(lambda device: torch.cuda.Stream(device))


@contextmanager
def own_stream(device: str | torch.device) -> Iterator[None]:
    """This thread's work on a CUDA stream of `device` ("auto": the current one) that no other thread
    holds (`StreamLeases`), so that threads' kernels can run side by side and a graph can be captured
    (never on the default stream); nothing on a machine without CUDA."""
    device = torch.device("cuda" if device == "auto" else device)
    if not torch.cuda.is_available() or device.type != "cuda":
        yield
        return
    if device.index is None:  # leases are kept per GPU
        device = torch.device("cuda", torch.cuda.current_device())
    with _STREAMS.lease(device) as stream:
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            yield
        torch.cuda.current_stream(device).wait_stream(stream)


def side_stream(device: torch.device) -> AbstractContextManager:
    """The current stream if this thread already has its own (`own_stream`), else a new one."""
    on_default = torch.cuda.current_stream(device) == torch.cuda.default_stream(device)
    return own_stream(device) if on_default else nullcontext()


def serialize_calls(cls: type, name: str) -> None:
    """Make every call of `cls.<name>` hold a lock of its instance for the call's length (idempotent):
    calls on one object from several threads run one after another, calls on different objects do not wait."""
    method = getattr(cls, name)
    if getattr(method, "_composer_serialized", False):
        return

    @functools.wraps(method)
    def locked(self, *args, **kwargs):
        lock = self.__dict__.get("_composer_lock") or self.__dict__.setdefault("_composer_lock", threading.RLock())
        with lock:
            return method(self, *args, **kwargs)

    locked._composer_serialized = True
    setattr(cls, name, locked)


def thread_safe_autotuners() -> bool:
    """Let runs in threads share Triton's autotuned kernels (mamba-ssm's among them). Triton's
    `Autotuner.run` keeps a call's arguments on the kernel object every thread shares (`self.nargs`,
    reset to None when the call ends), so two threads tuning one kernel at once fail with TypeError
    "'NoneType' object is not a mapping" (seen on an H200 with Triton 3.6, benchmarks/RESULTS.md,
    issue 15). Each autotuned kernel's `run` is serialised; a tuned kernel's call only launches, so the
    wait is short, and a replayed CUDA graph calls none. Returns False where Triton is not installed."""
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return False
    serialize_calls(Autotuner, "run")
    return True


def release_memory(*, collect: bool = False) -> None:
    """Hand the allocator's cached blocks (a finished graph's pool among them) back to the driver:
    another process on the GPU may need them, and while a capture runs in any thread the allocator
    cannot free them itself (so it would fail an allocation instead). Waits for the device.
    `collect`: first collect garbage, so a finished or failed run's model, optimizer and graph, held
    only in reference cycles, give their memory back too."""
    if collect:
        gc.collect()
    with _held(_CAPTURE):
        torch.cuda.empty_cache()


class StepGraph:
    """One training step captured as a CUDA graph over static input buffers.

    `forward_backward(batches) -> loss` and `update() -> grad_norm` are the trainer's eager step;
    they are captured once, on the current (side) stream, and `run(lr, batches)` copies the
    batches into the static buffers, sets the learning rate (a device tensor the captured AdamW
    reads) and replays. `loss` and `grad_norm` are the device tensors the replay writes: read them
    only when needed, each read waits for the GPU.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, batches: list[Batch],
                 forward_backward: Callable[[list[Batch]], torch.Tensor],
                 update: Callable[[], torch.Tensor], *, held: AbstractContextManager | None = None) -> None:
        device = batches[0][0].device
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group["capturable"] = True  # AdamW keeps its step count on the device
            group["lr"] = torch.tensor(float(group["lr"]), device=device)
        self.batches = [(x.clone(), y.clone()) for x, y in batches]  # the static inputs (B, T_in), (B, T_out)
        optimizer.zero_grad(set_to_none=True)  # gradients are allocated in the graph's pool
        try:  # instantiated below, after the locks (torch >= 2.8); before, capture_end instantiates it
            self.graph, deferred = torch.cuda.CUDAGraph(keep_graph=True), True
        except TypeError:
            self.graph, deferred = torch.cuda.CUDAGraph(), False
        # Not torch.cuda.graph(): it synchronizes the device and empties the allocator's cache, which
        # another thread's capture forbids. Captures take turns (and `held`, the caller's compile lock, with
        # them); other threads' replays go on.
        with held or nullcontext(), _held(_CAPTURE):
            self.graph.capture_begin(capture_error_mode="thread_local")
            try:
                self.loss = forward_backward(self.batches)
                self.grad_norm = update()
            finally:
                self.graph.capture_end()
        if deferred:  # the captured graph made executable: this thread's own work, so outside the locks
            self.graph.instantiate()

    def run(self, lr: float, batches: list[Batch]) -> None:
        for group in self.optimizer.param_groups:
            group["lr"].fill_(lr)
        for (x, y), (new_x, new_y) in zip(self.batches, batches):
            x.copy_(new_x, non_blocking=True)
            y.copy_(new_y, non_blocking=True)
        self.graph.replay()
