"""Past one process: the ranks of a torch.distributed process group (``torchrun``, ``accelerate launch``; gloo on CPU).

Evaluation splits its batches into one contiguous shard per rank (each row evaluated exactly once,
no padding duplicates), gathers the predictions in rank order (which is the original row order) and
computes the metric once, on rank 0, broadcasting the result. Every step that runs on the ranks
reports an ok/error status to all of them, so a step that fails on one rank raises ``DistributedError``
on every rank, naming the rank and its error, instead of leaving the others waiting in a collective.
A rank that dies or hangs is caught by the process group's timeout (``init_from_environment`` sets
``OPTIMUM_INT8_DIST_TIMEOUT`` seconds, 30 minutes by default).

Without an initialised process group of more than one rank (the default: one process) every function
here is the single-process path itself: no collective, no copy.
"""

import contextlib
import datetime
import os
from collections.abc import Callable

import torch.distributed as dist

TIMEOUT_ENV = "OPTIMUM_INT8_DIST_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 1800.0


class DistributedError(RuntimeError):
    """A step failed on one or more ranks; raised on every rank, with each failing rank's error."""


def is_distributed() -> bool:
    """Whether this process is one of several ranks of an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that writes files, prints results, saves and pushes."""
    return rank() == 0


def shard(num_items: int, rank_index: int | None = None, ranks: int | None = None) -> range:
    """The contiguous share of ``range(num_items)`` of a rank; the shares of all ranks cover it once, in order.

    Sizes differ by at most one (7 items on 2 ranks: 3 and 4); a rank gets none when there are fewer
    items than ranks.
    """
    rank_index = rank() if rank_index is None else rank_index
    ranks = world_size() if ranks is None else ranks
    if not 0 <= rank_index < ranks:
        raise ValueError(f"rank {rank_index} is not in a world of {ranks} ranks")
    return range(num_items * rank_index // ranks, num_items * (rank_index + 1) // ranks)


def _describe(error: BaseException) -> str:
    notes = "".join(f" ({note})" for note in getattr(error, "__notes__", ()))
    return f"{type(error).__name__}: {error}{notes}"


def _raise_failures(what: str, failures: list[tuple[int, str]], cause: BaseException | None):
    ranks = world_size()
    detail = "; ".join(f"rank {index} of {ranks}: {message}" for index, message in failures)
    where = "this rank" if any(index == rank() for index, _ in failures) else f"rank {failures[0][0]}"
    raise DistributedError(f"{what} failed on {detail} (every rank raises this; the traceback on {where} has the cause)") from cause


@contextlib.contextmanager
def _collective(what: str):
    """A collective that fails (a rank died, hung past the group's timeout, or is at another step) says which step."""
    try:
        yield
    except DistributedError:
        raise
    except RuntimeError as error:
        raise DistributedError(
            f"{what}: the collective failed on rank {rank()} of {world_size()}; another rank died, hung past the "
            f"process group's timeout or is at another step ({error})"
        ) from error


def gather(local, error: BaseException | None = None, what: str = "a step") -> list:
    """Every rank's ``local`` value, in rank order, on every rank (``[local]`` in one process).

    ``error`` is this rank's failure, if any: then the step fails on every rank with
    ``DistributedError`` naming each failing rank and its error (in one process ``error`` is re-raised as it is).
    """
    if not is_distributed():
        if error is not None:
            raise error
        return [local]
    payload = (None, local) if error is None else (_describe(error), None)
    gathered = [None] * world_size()
    with _collective(what):
        dist.all_gather_object(gathered, payload)
    failures = [(index, message) for index, (message, _) in enumerate(gathered) if message is not None]
    if failures:
        _raise_failures(what, failures, error)
    return [value for _, value in gathered]


def on_every_rank(fn: Callable, what: str) -> list:
    """Run ``fn()`` on every rank; its results in rank order, or ``DistributedError`` on every rank if one failed."""
    if not is_distributed():
        return [fn()]
    try:
        local, error = fn(), None
    except Exception as exc:  # reported to every rank by gather
        local, error = None, exc
    return gather(local, error, what)


def on_main_process(fn: Callable, what: str):
    """Run ``fn()`` on rank 0 only and return its result on every rank; its failure raises on every rank."""
    if not is_distributed():
        return fn()
    error = result = None
    if is_main_process():
        try:
            result = fn()
        except Exception as exc:  # broadcast below, then raised on every rank
            error = exc
    payload = [(None if error is None else _describe(error), result)]
    with _collective(what):
        dist.broadcast_object_list(payload, src=0)
    message, result = payload[0]
    if message is not None:
        _raise_failures(what, [(0, message)], error)
    return result


def broadcast(value, what: str = "a broadcast decision"):
    """Rank 0's ``value`` on every rank (a decision all ranks must take the same way)."""
    if not is_distributed():
        return value
    payload = [value]
    with _collective(what):
        dist.broadcast_object_list(payload, src=0)
    return payload[0]


def timeout_from_environment() -> datetime.timedelta:
    raw = os.environ.get(TIMEOUT_ENV)
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_SECONDS
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


def init_from_environment(timeout: datetime.timedelta | None = None) -> bool:
    """Join the process group that ``torchrun`` / ``accelerate launch`` describe (``WORLD_SIZE`` > 1), on gloo.

    Returns whether it initialised one; it does nothing when there is one already (the caller's own)
    or when this is a single process.
    """
    if not dist.is_available() or dist.is_initialized():
        return False
    world = os.environ.get("WORLD_SIZE", "1")
    if int(world) <= 1:
        return False
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {missing} are not set; launch with torchrun or accelerate launch.")
    dist.init_process_group("gloo", timeout=timeout or timeout_from_environment())
    return True


@contextlib.contextmanager
def process_group_from_environment():
    """``init_from_environment()`` for the duration of a command; destroys the group only if it made it."""
    created = init_from_environment()
    try:
        yield
    finally:
        if created:
            dist.destroy_process_group()
