"""Several encoder processes behind one ``encode()``: ``EncoderPool("minilm", workers=2)``.

One :class:`~e2ekit.text.encoding.Encoder` runs one model call at a time, so a server on a
machine with several GPUs (or with CPU cores that one session does not keep busy) leaves
them idle. The pool starts one worker process per CUDA device (``spawn``: each gets a fresh
CUDA context), or ``workers`` CPU processes that split the CPU threads between them. A call
is cut into contiguous shares of about equal token count, each share goes to the worker with
the fewest queued tokens, and the vectors come back in input order. A worker that dies is
restarted and its share retried once, so one crash costs a request some latency, not an error.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import multiprocessing as mp
import os
import pickle
import signal
import threading
import traceback
import weakref
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e2ekit.text.encoding.batching import WordPieces, check_inputs
from e2ekit.text.encoding.errors import EncoderOptionError

__all__ = [
    "EncoderPool",
    "WorkerCrashed",
    "WorkerSpec",
    "assign_shares",
    "cuda_device_count",
    "plan_workers",
    "split_shares",
]

log = logging.getLogger("e2ekit.text")

START_TIMEOUT_S = 900.0  # the first start may build the ONNX export (tens of seconds)
STOP_TIMEOUT_S = 10.0


class WorkerCrashed(RuntimeError):
    """A worker process died again on the share it was retrying (or did not start)."""


class _Died(Exception):
    """A worker process exited while a share was queued on it (internal: triggers a retry)."""


# -- planning (no processes) ----------------------------------------------------------------
def split_shares(lengths: Sequence[int], n: int) -> list[slice]:
    """Contiguous slices of the inputs, at most ``n`` and none empty, whose token counts
    (``lengths``) are as equal as cutting between inputs allows: order is kept, so each
    worker's vectors go straight back into their slice."""
    count = len(lengths)
    n = max(1, min(int(n), count))
    if count == 0:
        return []
    prefix = np.cumsum(np.asarray(lengths, dtype=np.int64))
    total = int(prefix[-1])
    cuts = [0]
    for k in range(1, n):
        target = total * k / n
        hi = int(np.searchsorted(prefix, target)) + 1  # first cut with prefix >= target
        lo = hi - 1
        best = lo if lo > 0 and target - prefix[lo - 1] <= prefix[hi - 1] - target else hi
        cuts.append(min(max(best, cuts[-1] + 1), count - (n - k)))
    cuts.append(count)
    return [slice(a, b) for a, b in itertools.pairwise(cuts)]


def assign_shares(tokens: Sequence[int], loads: Sequence[int]) -> list[int]:
    """The worker index for each share: largest share first, each to the worker with the
    fewest queued tokens (the shares already placed counted; ties go to the lower index)."""
    if not loads:
        raise ValueError("no workers to assign shares to")
    queued = [int(x) for x in loads]
    out = [0] * len(tokens)
    for s in sorted(range(len(tokens)), key=lambda i: -int(tokens[i])):
        w = min(range(len(queued)), key=lambda i: (queued[i], i))
        out[s] = w
        queued[w] += int(tokens[s])
    return out


@dataclass(frozen=True)
class WorkerSpec:
    """How one worker runs: its device name, the CUDA device it sees and its CPU threads."""

    device: str  # "cpu" or "cuda:i" (i: index among the devices this process sees)
    visible: str | None  # CUDA_VISIBLE_DEVICES for the worker (its one GPU), None on the CPU
    threads: int | None


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _visible_ids(count: int) -> list[str]:
    """The ids to give CUDA_VISIBLE_DEVICES for devices 0..count-1 as this process sees them."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is not None:
        ids = [x.strip() for x in parent.split(",") if x.strip()]
        if len(ids) >= count:
            return ids[:count]
    return [str(i) for i in range(count)]


def cuda_device_count(backend: str, precision: str, device: str) -> int:
    """How many CUDA devices an Encoder with these options would run on: 0 on the CPU."""
    from e2ekit.text.encoding.encoder import plan_runtime

    if plan_runtime(backend, precision, device)[1] != "cuda":
        return 0
    import torch

    return int(torch.cuda.device_count())


def plan_workers(
    workers: int | None, *, gpus: int, threads: int | None, cpus: int | None = None
) -> list[WorkerSpec]:
    """One spec per worker: on ``gpus`` CUDA devices, ``workers`` (default one per device)
    round-robin over them; on the CPU, ``workers`` (default 2, at most the cores) processes,
    each with its share of ``threads`` (default: the cores this process may use), so the
    workers together use what one Encoder would, without oversubscribing."""
    if workers is not None and (isinstance(workers, bool) or workers < 1):
        raise EncoderOptionError(f"workers must be a positive int or None, got {workers!r}")
    cpus = _cpu_count() if cpus is None else cpus
    if gpus > 0:
        ids = _visible_ids(gpus)
        n = workers or gpus
        return [WorkerSpec(f"cuda:{i % gpus}", ids[i % gpus], threads) for i in range(n)]
    n = workers or max(1, min(2, cpus))
    each = max(1, (threads or cpus) // n)
    return [WorkerSpec("cpu", None, each) for _ in range(n)]


# -- the worker process -------------------------------------------------------------------------
def _portable(exc: BaseException) -> BaseException:
    """``exc`` itself when it survives pickling (so the caller sees the Encoder's exception
    type), else a RuntimeError with its type and message; the worker's traceback is noted."""
    note = "in the encoder worker:\n" + "".join(traceback.format_exception(exc)).rstrip()
    try:
        out: BaseException = pickle.loads(pickle.dumps(exc))
    except Exception:
        out = RuntimeError(f"{type(exc).__name__}: {exc}")
    out.__traceback__ = None
    out.__cause__ = out.__context__ = None
    add_note = getattr(out, "add_note", None)  # Python 3.11+
    if add_note is not None:
        add_note(note)
    return out


def _worker_main(conn: Any, options: dict[str, Any], visible: str | None) -> None:
    """Build one Encoder, say ``ready`` with what it is, then answer encode jobs until told
    to stop or the pool's end of the pipe closes (the server exited)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the server; it stops us
    if visible is not None:  # before anything initialises CUDA here
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    try:
        from e2ekit.text.encoding.encoder import Encoder

        enc = Encoder(**options)
    except BaseException as exc:
        conn.send(("error", None, _portable(exc)))
        return
    conn.send(("ready", _describe(enc)))
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "stop":
                break
            _, job, texts, is_tokenized, batch_size = msg
            try:
                vectors = enc.encode(texts, batch_size=batch_size, is_tokenized=is_tokenized)
                reply: tuple[Any, ...] = ("ok", job, vectors, list(enc.last_truncated_inputs))
            except Exception as exc:
                reply = ("error", job, _portable(exc))
            conn.send(reply)
    finally:
        enc.close()


def _describe(enc: Any) -> dict[str, Any]:
    names = ("dim", "max_length", "normalize", "pooling", "layer", "backend", "device")
    more = ("precision", "threads", "hidden_size", "num_layers", "batch_size", "report")
    info = {name: getattr(enc, name) for name in (*names, *more)}
    info.update(
        runtime=enc.runtime, model_dir=str(enc.model_dir), exported=enc.exported, pid=os.getpid()
    )
    return info


# -- the pool side ------------------------------------------------------------------------------
class _Proc:
    """One started worker process, its pipe, its jobs in flight and the thread reading
    its answers."""

    def __init__(self, slot: int, spec: WorkerSpec, ctx: Any, options: dict[str, Any]) -> None:
        self.slot = slot
        self.spec = spec
        self.pending: dict[int, tuple[Future[Any], int]] = {}
        self.dead = False
        self.send_lock = threading.Lock()
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_worker_main,
            args=(child, options, spec.visible),
            name=f"e2ekit-encoder-{slot}",
            daemon=True,
        )
        self.process.start()
        child.close()  # only the worker holds its end: its exit is EOF here
        self.info: dict[str, Any] = {}
        self.reader: threading.Thread | None = None

    @property
    def queued(self) -> int:
        return sum(tokens for _, tokens in self.pending.values())

    @property
    def alive(self) -> bool:
        return not self.dead and self.process.is_alive()

    def wait_ready(self, timeout: float) -> dict[str, Any]:
        """The worker's description once its Encoder is built; its start error re-raised."""
        try:
            if not self.conn.poll(timeout):
                raise WorkerCrashed(f"encoder worker {self.slot} did not start in {timeout:.0f}s")
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(STOP_TIMEOUT_S)
            raise WorkerCrashed(
                f"encoder worker {self.slot} exited while starting "
                f"(exit code {self.process.exitcode})"
            ) from None
        except BaseException:
            self.stop(0.0)
            raise
        if msg[0] == "error":
            self.process.join(STOP_TIMEOUT_S)
            self.conn.close()
            raise msg[2]
        self.info = msg[1]
        return self.info

    def stop(self, timeout: float) -> None:
        """Ask the worker to finish, then terminate (and kill) it if it does not."""
        try:
            with self.send_lock:
                self.conn.send(("stop",))
        except (OSError, ValueError):
            pass
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(2.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)
        if self.reader is not None and self.reader is not threading.current_thread():
            self.reader.join(2.0)
        self.conn.close()


class EncoderPool:
    """Encoder's ``encode`` / ``tokenize`` / ``dim`` / ``last_truncated`` over worker processes.

    ``workers``: processes; None: one per CUDA device when the options run on CUDA, else 2
    CPU processes (at most the cores). On CUDA, worker ``i`` sees only device ``i`` (more
    workers than devices go round-robin). On the CPU, ``threads`` (default: the usable cores)
    is split evenly between the workers. The other options are :class:`Encoder`'s, and each
    worker builds its Encoder from them. Thread-safe: concurrent calls share the workers by
    queued tokens. :attr:`restarts` counts workers restarted after dying.
    """

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        workers: int | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        pooling: str | None = None,
        layer: int = -1,
        normalize: bool | None = None,
        max_length: int | None = None,
        batch_size: int = 32,
        threads: int | None = None,
        device: str = "auto",
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        from e2ekit.text.encoding.encoder import _choice, _positive, plan_runtime
        from e2ekit.text.encoding.pooling import POOLINGS
        from e2ekit.text.models.pretrained import load_tokenizer, resolve_model_dir

        # what can be checked here fails before any process starts
        if pooling is not None:
            _choice("pooling", pooling, POOLINGS)
        _positive("batch_size", batch_size)
        if threads is not None:
            _positive("threads", threads)
        run_backend, run_device = plan_runtime(backend, precision, device)
        self.model_dir: Path = resolve_model_dir(str(model), "model", weights=True)
        gpus = cuda_device_count(run_backend, precision, run_device)
        self.specs = plan_workers(workers, gpus=gpus, threads=threads)
        self._options = {
            "model": str(self.model_dir),
            "backend": run_backend,
            "precision": precision,
            "pooling": pooling,
            "layer": layer,
            "normalize": normalize,
            "max_length": max_length,
            "batch_size": batch_size,
            "device": "cuda" if gpus else "cpu",
        }
        self._ctx = mp.get_context("spawn")
        self._start_timeout_s = float(start_timeout_s)
        self._lock = threading.Lock()  # pending jobs, queued tokens, job ids
        self._restart_locks = [threading.Lock() for _ in self.specs]
        self._jobs = itertools.count()
        self._closed = False
        self.restarts = 0
        self.last_truncated = 0
        self.last_truncated_inputs: list[int] = []
        self._procs: list[_Proc] = []
        try:
            # the first worker alone: it builds (and caches) the export the others then load
            self._procs.append(self._start(0))
            for slot in range(1, len(self.specs)):
                self._procs.append(self._spawn(slot))
            for proc in self._procs[1:]:
                self._ready(proc)
        except BaseException:
            self._stop_all()
            raise
        info = self._procs[0].info
        self.dim: int = int(info["dim"])
        self.max_length: int = int(info["max_length"])
        self.normalize: bool = bool(info["normalize"])
        self.pooling: str = info["pooling"]
        self.layer: int = int(info["layer"])
        self.backend: str = info["backend"]
        self.device: str = info["device"]
        self.precision: str = info["precision"]
        self.threads: int | None = info["threads"]
        self.hidden_size: int = int(info["hidden_size"])
        self.num_layers: int = int(info["num_layers"])
        self.batch_size: int = int(info["batch_size"])
        self._pieces = WordPieces(load_tokenizer(self.model_dir), self.max_length)
        _POOLS.add(self)

    # -- processes -------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> _Proc:
        spec = self.specs[slot]
        return _Proc(slot, spec, self._ctx, {**self._options, "threads": spec.threads})

    def _ready(self, proc: _Proc) -> None:
        proc.wait_ready(self._start_timeout_s)
        proc.reader = threading.Thread(
            target=self._read, args=(proc,), name=f"e2ekit-encoder-{proc.slot}-reader", daemon=True
        )
        proc.reader.start()

    def _start(self, slot: int) -> _Proc:
        proc = self._spawn(slot)
        self._ready(proc)
        return proc

    def _read(self, proc: _Proc) -> None:
        """Hand each answer to the call waiting for it; at EOF (the worker exited) fail
        every share still queued on the worker so their calls retry them."""
        while True:
            try:
                msg = proc.conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                fut, _ = proc.pending.pop(msg[1], (None, 0))
            if fut is None:
                continue
            if msg[0] == "ok":
                fut.set_result((msg[2], msg[3]))
            else:
                fut.set_exception(msg[2])
        with self._lock:
            proc.dead = True
            lost = list(proc.pending.values())
            proc.pending.clear()
        proc.process.join(STOP_TIMEOUT_S)  # EOF: it is exiting; reap it for its exit code
        code = proc.process.exitcode
        for fut, _ in lost:
            fut.set_exception(_Died(f"encoder worker {proc.slot} exited (code {code})"))

    def _ensure(self, slot: int) -> _Proc:
        """The slot's worker, restarted first if it has died."""
        proc = self._procs[slot]
        if proc.alive:
            return proc
        with self._restart_locks[slot]:
            if self._closed:
                raise RuntimeError("this EncoderPool is closed")
            proc = self._procs[slot]
            if proc.alive:
                return proc
            proc.stop(0.0)
            log.warning(
                "encoder worker %d (pid %s) exited with code %s: restarting it",
                slot,
                proc.process.pid,
                proc.process.exitcode,
            )
            fresh = self._start(slot)
            self._procs[slot] = fresh
            self.restarts += 1
            return fresh

    def _send(self, slot: int, job: tuple[Any, ...], tokens: int) -> Future[Any]:
        proc = self._ensure(slot)
        fut: Future[Any] = Future()
        with self._lock:
            if proc.dead:
                fut.set_exception(_Died(f"encoder worker {slot} exited"))
                return fut
            job_id = next(self._jobs)
            proc.pending[job_id] = (fut, tokens)
        try:
            with proc.send_lock:
                proc.conn.send((job[0], job_id, *job[1:]))
        except (OSError, ValueError):  # the worker went away under us; the reader fails it
            with self._lock:
                if proc.pending.pop(job_id, None) is not None:
                    fut.set_exception(_Died(f"encoder worker {slot} exited"))
        return fut

    def _least_loaded(self, tokens: Sequence[int]) -> list[int]:
        with self._lock:
            loads = [p.queued for p in self._procs]
        return assign_shares(tokens, loads)

    def _stop_all(self) -> None:
        for proc in self._procs:
            proc.stop(STOP_TIMEOUT_S)

    # -- the Encoder API --------------------------------------------------------------------------
    @property
    def workers(self) -> int:
        return len(self.specs)

    @property
    def pids(self) -> list[int | None]:
        """The worker processes' ids, by slot (a restart changes its slot's)."""
        return [p.process.pid for p in self._procs]

    @property
    def report(self) -> dict[str, Any] | None:
        """The export's report, as :attr:`Encoder.report`."""
        report: dict[str, Any] | None = self._procs[0].info.get("report")
        return report

    @property
    def exported(self) -> bool:
        """Whether the first worker built the export (False: it reused the cached one)."""
        return bool(self._procs[0].info.get("exported"))

    @property
    def runtime(self) -> dict[str, Any]:
        """The first worker's runtime, plus how many workers run on which devices."""
        return {
            **self._procs[0].info["runtime"],
            "workers": self.workers,
            "devices": [s.device for s in self.specs],
        }

    def tokenize(
        self, texts: str | list[str] | list[list[str]], *, is_tokenized: bool = False
    ) -> list[list[str]]:
        """The tokens the model sees for each input (this process's copy of the tokenizer)."""
        items = check_inputs(texts, is_tokenized=is_tokenized)
        return self._pieces(items, is_tokenized=is_tokenized).tokens

    def encode(
        self,
        texts: str | list[str] | list[list[str]],
        *,
        batch_size: int | None = None,
        is_tokenized: bool = False,
    ) -> np.ndarray:
        """(N, dim) float32 vectors in input order, as :meth:`Encoder.encode`, with
        :attr:`last_truncated` / :attr:`last_truncated_inputs` set the same way."""
        from e2ekit.text.encoding.encoder import _positive

        if self._closed:
            raise RuntimeError("this EncoderPool is closed")
        size = self.batch_size if batch_size is None else _positive("batch_size", batch_size)
        items = check_inputs(texts, is_tokenized=is_tokenized)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        cut: list[int] = []
        if items:
            lengths = [len(ids) for ids in self._pieces(items, is_tokenized=is_tokenized).ids]
            shares = split_shares(lengths, self.workers)
            tokens = [sum(lengths[s]) for s in shares]
            jobs = [("encode", items[s], is_tokenized, size) for s in shares]
            slots = self._least_loaded(tokens)
            futures = [self._send(w, job, t) for w, job, t in zip(slots, jobs, tokens, strict=True)]
            for share, job, t, fut in zip(shares, jobs, tokens, futures, strict=True):
                vectors, share_cut = self._result(fut, job, t)
                out[share] = vectors
                cut.extend(share.start + i for i in share_cut)
        self.last_truncated = len(cut)
        self.last_truncated_inputs = cut
        return out

    def _result(self, fut: Future[Any], job: tuple[Any, ...], tokens: int) -> Any:
        """The share's answer; if its worker died, once more on the least-loaded worker
        (the dead one restarted first, so the pool keeps its size)."""
        try:
            return fut.result()
        except _Died as exc:
            log.warning("%s; retrying its share of %d inputs", exc, len(job[1]))
        for slot in range(self.workers):
            self._ensure(slot)
        retry = self._send(self._least_loaded([tokens])[0], job, tokens)
        try:
            return retry.result()
        except _Died as exc:
            raise WorkerCrashed(f"{exc} twice on the same share of {len(job[1])} inputs") from None

    def close(self) -> None:
        """Stop the workers (idempotent; also done at interpreter exit); encode() afterwards
        is an error."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for lock in self._restart_locks:  # no restart may start once closing
            with lock:
                pass
        self._stop_all()
        _POOLS.discard(self)

    def __enter__(self) -> EncoderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"EncoderPool({str(self.model_dir)!r}, workers={self.workers}, "
            f"backend={self.backend!r}, devices={[s.device for s in self.specs]!r}, "
            f"dim={self.dim})"
        )


_POOLS: weakref.WeakSet[EncoderPool] = weakref.WeakSet()


@atexit.register
def _close_pools() -> None:
    """Stop every pool's workers at interpreter exit (a server that never called close)."""
    for pool in list(_POOLS):
        try:
            pool.close()
        except Exception:  # exiting anyway: a worker that will not stop is killed
            log.debug("closing an EncoderPool at exit failed", exc_info=True)
