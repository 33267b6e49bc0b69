"""Run a function on a real torch.distributed process group of spawned processes (gloo on loopback), with a hard timeout.

``run_ranks(worker, world_size, *args)`` spawns one process per rank; each joins a gloo group on
127.0.0.1 at a free port with one torch thread, calls ``worker(*args)`` and sends back what it
returned, or the exception it raised (type, message, seconds). Processes still running at the deadline
are killed and the call fails, so a hanging collective fails the test instead of hanging it.
"""

import datetime
import multiprocessing
import os
import socket
import time
import traceback

import pytest

GROUP_TIMEOUT_SECONDS = 30  # a collective waiting longer than this on a dead rank raises
RUN_TIMEOUT_SECONDS = 240  # the whole group, process start-up included, on a shared 2-core machine


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank_main(rank, world_size, port, queue, worker, args):
    os.environ.update(GLOO_SOCKET_IFNAME="lo", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    start = time.monotonic()
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=GROUP_TIMEOUT_SECONDS))
        try:
            outcome = {"result": worker(*args)}
        finally:
            dist.destroy_process_group()
    except BaseException as error:  # sent to the parent, which decides what is expected
        outcome = {"error": type(error).__name__, "message": str(error), "traceback": traceback.format_exc()}
    outcome["seconds"] = time.monotonic() - start
    queue.put((rank, outcome))


def run_ranks(worker, world_size: int, *args, timeout: float = RUN_TIMEOUT_SECONDS, require_all: bool = True) -> list:
    """``[{"result": ...} or {"error", "message", "traceback"}, plus "seconds"]`` per rank, in rank order.

    A rank that reported nothing (it died) fails the test, or is ``None`` with ``require_all=False``.
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_rank_main, args=(rank, world_size, port, queue, worker, args), daemon=True)
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + timeout
    outcomes = {}
    try:
        while len(outcomes) < world_size and time.monotonic() < deadline:
            try:
                rank, outcome = queue.get(timeout=0.5)
                outcomes[rank] = outcome
            except Exception:  # queue.Empty: check the processes and the deadline again
                if all(not process.is_alive() for process in processes) and queue.empty():
                    break
    finally:
        for process in processes:
            process.join(timeout=max(0.0, min(5.0, deadline - time.monotonic())))
            if process.is_alive():
                process.kill()
                process.join()
    missing = [rank for rank in range(world_size) if rank not in outcomes]
    if missing and require_all:
        codes = {rank: processes[rank].exitcode for rank in missing}
        pytest.fail(f"ranks {missing} reported nothing within {timeout} s (exit codes {codes}): hung or died")
    return [outcomes.get(rank) for rank in range(world_size)]


def results(outcomes: list[dict]) -> list:
    """Each rank's result, failing the test with the traceback of any rank that raised."""
    for rank, outcome in enumerate(outcomes):
        if "error" in outcome:
            pytest.fail(f"rank {rank} raised {outcome['error']}: {outcome['message']}\n{outcome['traceback']}")
    return [outcome["result"] for outcome in outcomes]
