"""Run a test function on two gloo ranks over loopback.

Rank 0 runs in the calling process and hosts the rendezvous store. Rank 1 runs in a
spawned process, so the test pays for one interpreter start instead of two. Rank 1
leaves the process group first and rank 0 waits for it to exit before leaving, because
a rank that is still leaving when its peer removes the store can abort.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from multiprocessing.process import BaseProcess

import torch.distributed as dist
import torch.multiprocessing as mp

Work = Callable[[int, str], None]
JOIN_SECONDS = 120


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def join_group(rank: int, port: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )


def spawned_rank(work: Work, port: int, out_dir: str) -> None:
    join_group(1, port)
    try:
        work(1, out_dir)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_two_ranks(work: Work, out_dir: str) -> None:
    """Call ``work(rank, out_dir)`` on ranks 0 and 1 and raise if rank 1 fails.

    ``work`` must be a module-level function so that the spawned process can import it.
    """
    port = free_port()
    interface = os.environ.get("GLOO_SOCKET_IFNAME")
    other = mp.get_context("spawn").Process(target=spawned_rank, args=(work, port, out_dir))
    other.start()
    try:
        _run_rank_zero(work, port, out_dir, other)
    finally:
        if other.is_alive():
            other.kill()
            other.join()
        if interface is None:
            os.environ.pop("GLOO_SOCKET_IFNAME", None)
        else:
            os.environ["GLOO_SOCKET_IFNAME"] = interface
    if other.exitcode != 0:
        raise AssertionError(f"rank 1 exited with code {other.exitcode}")


def _run_rank_zero(work: Work, port: int, out_dir: str, other: BaseProcess) -> None:
    """Run rank 0 and leave the group after rank 1 has exited.

    When rank 0 fails, rank 1 is killed at once instead of waiting out the collective
    timeout. When rank 0 fails because rank 1 died first (gloo reports a closed
    connection), the error names rank 1's exit code.
    """
    join_group(0, port)
    try:
        work(0, out_dir)
        dist.barrier()
    except BaseException as error:
        other.join(timeout=1)
        if other.exitcode not in (None, 0):
            raise AssertionError(f"rank 1 exited with code {other.exitcode}") from error
        other.kill()
        raise
    finally:
        other.join(timeout=JOIN_SECONDS)
        dist.destroy_process_group()
