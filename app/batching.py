"""Dynamic batching: requests for one model share forward passes.

Requests enqueue their preprocessed items in a bounded queue. One worker task per model
takes up to ``max_batch_size`` items and waits at most ``max_wait_ms`` after the first
one for more to arrive. A lone item right after a batch of one goes at once, so a client
that sends one request at a time pays no wait. Each batch is one forward pass in an
inference thread, never on the event loop, and each request gets its rows once all of
them are computed.

With ``streams`` above one, that many forward passes of the model may run at once, each
in its own inference thread: while one batch computes, the worker collects the next and
starts it on a free thread. One pass split over two threads stalls whenever the event
loop or tokenizing takes one of the cores, because its threads wait for each other. On
2 cores, two passes of one thread each served 15 to 25% more images or texts than one
pass of two threads (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from app.errors import InferenceFailed, NotReady, Overloaded, ServiceError
from app.metrics import ServiceMetrics
from app.registry import LoadedModel, ModelInput

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    """One caller's items in flight: rows fill in as batches finish."""

    future: asyncio.Future[torch.Tensor]
    rows: list[torch.Tensor | None]
    remaining: int
    queued_at: float  # time.monotonic() when the request was queued


@dataclass
class _Entry:
    """One queued item and where its row goes."""

    request: _Request
    position: int
    input: ModelInput


@dataclass
class DynamicBatcher:
    """The queue and worker of one model.

    Args:
        model: the loaded model whose ``encode`` runs each batch.
        max_batch_size: maximum items in one forward pass.
        max_wait_ms: maximum wait after the first queued item for a batch to fill.
        max_queue_items: maximum queued items; past it ``submit`` raises Overloaded.
        metrics: where queue depth, batch sizes and inference times go.
        torch_threads: intra-op threads of a forward pass that runs alone; 0 keeps torch's setting.
        large_batch_threads: intra-op threads for batches of at least ``large_batch_items``.
        large_batch_items: the batch size from which ``large_batch_threads`` apply; 0 never.
        streams: forward passes that may run at once, each in its own inference thread.
            Passes that run at once split the thread counts above.
    """

    model: LoadedModel
    max_batch_size: int
    max_wait_ms: float
    max_queue_items: int
    metrics: ServiceMetrics
    torch_threads: int = 0
    large_batch_threads: int = 0
    large_batch_items: int = 0
    streams: int = 1
    _queue: deque[_Entry] = field(default_factory=deque, init=False)
    _arrived: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _worker: asyncio.Task[None] | None = field(default=None, init=False)
    _executor: ThreadPoolExecutor | None = field(default=None, init=False)
    _last_batch_size: int = field(default=0, init=False)
    _initial_threads: int = field(default=0, init=False)
    _failure: BaseException | None = field(default=None, init=False)  # the first bug in a batch task, which the worker re-raises

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must not be negative, got {self.max_wait_ms}")
        if self.max_queue_items < 1:
            raise ValueError(f"max_queue_items must be at least 1, got {self.max_queue_items}")
        if self.streams < 1:
            raise ValueError(f"streams must be at least 1, got {self.streams}")

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def alive(self) -> bool:
        """Whether the worker task is running; a dead worker makes the service not ready."""
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        """Start the worker task and its inference thread on the running event loop."""
        if self._worker is not None:
            raise RuntimeError(f"batcher of model {self.model.id} is already started")
        self._executor = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix=f"infer-{self.model.id}")
        self._worker = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self.model.id}")
        self._worker.add_done_callback(self._on_worker_done)
        self.metrics.queue_depth.labels(model=self.model.id).set_function(lambda: self.queue_depth)
        self.metrics.register_model(self.model.id)

    async def stop(self) -> None:
        """Cancel the worker, fail what is still queued and release the inference thread."""
        if self._worker is not None:
            self._worker.cancel()
            # a worker that died of an error has already logged it in _on_worker_done
            await asyncio.gather(self._worker, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft().request
            if not request.future.done():
                request.future.set_exception(NotReady(f"model {self.model.id} is shutting down; retry on another replica"))
        if self._executor is not None:
            # a pass still computing finishes in its thread while the event loop keeps serving
            await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)

    async def submit(self, inputs: list[ModelInput]) -> torch.Tensor:
        """Queue preprocessed inputs and return their raw embeddings (N, D) float32, in order.

        Raises Overloaded (503 with Retry-After) when the queue has no room for all of
        them, so a request is queued entirely or not at all. Cancelling the caller (a
        timeout or a client that went away) leaves its remaining items uncomputed.
        """
        if not inputs:
            raise ValueError("submit needs at least one input")
        if not self.alive:
            raise NotReady(f"the batching worker of model {self.model.id} is not running; retry on another replica")
        if self.queue_depth + len(inputs) > self.max_queue_items:
            self._drop_abandoned()
        if self.queue_depth + len(inputs) > self.max_queue_items:
            self.metrics.rejected_items.labels(model=self.model.id).inc(len(inputs))
            raise Overloaded(
                f"model {self.model.id} has {self.queue_depth} items queued and room for "
                f"{self.max_queue_items}; retry later",
                retry_after_s=1,
            )

        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        request = _Request(future=future, rows=[None] * len(inputs), remaining=len(inputs), queued_at=time.monotonic())
        self._queue.extend(_Entry(request, position, tensor) for position, tensor in enumerate(inputs))
        self._arrived.set()
        return await future

    def _drop_abandoned(self) -> None:
        """Remove queued items whose request was cancelled, counting them as skipped."""
        live = deque(entry for entry in self._queue if not entry.request.future.done())
        skipped = len(self._queue) - len(live)
        if skipped:
            self.metrics.skipped_items.labels(model=self.model.id).inc(skipped)
        self._queue = live

    def _on_worker_done(self, worker: asyncio.Task[None]) -> None:
        """Fail the requests still queued when the worker ends, so that none waits for its timeout."""
        if worker.cancelled():
            return  # stop() fails what is queued
        logger.error("batching worker of model %s stopped", self.model.id, exc_info=worker.exception())
        while self._queue:
            request = self._queue.popleft().request
            if not request.future.done():
                request.future.set_exception(NotReady(f"the batching worker of model {self.model.id} stopped"))

    async def _run(self) -> None:
        logger.info(
            "batcher of model %s started (batch %d, wait %.1f ms, %d streams)",
            self.model.id, self.max_batch_size, self.max_wait_ms, self.streams,
        )
        free_streams = asyncio.Semaphore(self.streams)
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                await free_streams.acquire()
                batch = await self._collect()
                if not batch:
                    free_streams.release()
                    continue
                # this pass shares the CPUs with the passes still running
                passes = 1 + sum(not other.done() for other in running)
                task = asyncio.get_running_loop().create_task(self._run_batch(batch, free_streams, passes))
                running.add(task)
                task.add_done_callback(running.discard)
        except asyncio.CancelledError:
            if self._failure is not None:  # a batch task cancelled the worker because of a bug
                raise self._failure from None
            raise
        finally:
            # stopped or ended by a bug, so no batch in flight may be left waiting
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _run_batch(self, batch: list[_Entry], free_streams: asyncio.Semaphore, passes: int) -> None:
        """Process ``batch`` as one of ``passes`` running passes, then free its stream. A bug fails the batch and ends the worker."""
        try:
            await self._process(batch, passes)
        except BaseException as error:  # cancelled by stop(), or a bug: the batch must not hang
            _fail_entries(batch, NotReady(f"model {self.model.id} stopped while computing this request"))
            if isinstance(error, asyncio.CancelledError) or self._worker is None:
                raise
            if self._failure is None:  # the worker re-raises the first bug, so it is logged once
                self._failure = error
            self._worker.cancel()
        finally:
            free_streams.release()

    async def _collect(self) -> list[_Entry]:
        """Wait for a first item, then until it has waited max_wait_ms for the batch to fill, and return the live items.

        The wait counts from when the oldest queued item arrived, so items that queued
        while every stream was busy go at once when a stream frees up. A lone item after
        a batch of one is sent at once: with one request at a time there is nothing to
        wait for, and the wait would only add latency. As soon as requests overlap,
        batches grow past one and the wait applies again.
        """
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()
        await asyncio.sleep(0)  # let requests submitted in the same event-loop turn join
        if not self._queue:
            return []  # a full queue dropped abandoned items meanwhile

        wait_s = self.max_wait_ms / 1000
        if len(self._queue) == 1 and self._last_batch_size == 1:
            wait_s = 0.0
        deadline = self._queue[0].request.queued_at + wait_s
        while len(self._queue) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._arrived.clear()
            # asyncio.wait, not wait_for: on Python 3.11 wait_for can swallow a cancel
            # that arrives just as the event is set, and stop() would then wait forever
            arrival = asyncio.ensure_future(self._arrived.wait())
            try:
                await asyncio.wait({arrival}, timeout=remaining)
            finally:
                arrival.cancel()

        batch = []
        skipped = 0
        while self._queue and len(batch) < self.max_batch_size:
            entry = self._queue.popleft()
            if entry.request.future.done():
                skipped += 1
            else:
                batch.append(entry)
        if skipped:
            self.metrics.skipped_items.labels(model=self.model.id).inc(skipped)
            logger.debug("model %s: skipped %d items of cancelled requests", self.model.id, skipped)
        self._last_batch_size = len(batch)
        return batch

    async def _process(self, batch: list[_Entry], passes: int = 1) -> None:
        """Run one forward pass, one of ``passes`` running at once, and deliver its rows. A failed pass fails only this batch's requests."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            embeddings = await loop.run_in_executor(self._executor, self._encode, [entry.input for entry in batch], passes)
        except Exception as error:  # any failure of the forward pass ends this batch only
            logger.exception("model %s: forward pass over %d items failed", self.model.id, len(batch))
            _fail_entries(batch, self._describe_failure(error))
            return

        elapsed = time.perf_counter() - started
        self.metrics.batch_size.labels(model=self.model.id).observe(len(batch))
        self.metrics.inference_seconds.labels(model=self.model.id).observe(elapsed)
        logger.debug("model %s: batch of %d in %.1f ms", self.model.id, len(batch), elapsed * 1000)

        self._deliver(batch, embeddings)

    def threads_for(self, batch_size: int, passes: int = 1) -> int:
        """Return the intra-op threads for a batch of ``batch_size`` items run as one of ``passes`` passes (0: torch's setting).

        A small batch leaves a core to the event loop, which then reads and replies to
        requests while the model runs. A large batch means requests are queueing, so the
        forward pass is the bottleneck and may take every core. A pass that starts while
        others run splits these counts with them. A pass keeps the count it started
        with, so when a pass starts beside one that started alone, the two briefly use
        more threads than there are cores.
        """
        if self.large_batch_items and self.large_batch_threads and batch_size >= self.large_batch_items:
            threads = self.large_batch_threads
        else:
            threads = self.torch_threads
        return max(1, threads // passes) if threads else 0

    def _encode(self, inputs: list[ModelInput], passes: int = 1) -> torch.Tensor:
        """Run the model on ``inputs`` in an inference thread, with the threads their batch size and ``passes`` call for."""
        if not self._initial_threads:
            self._initial_threads = torch.get_num_threads()
        threads = self.threads_for(len(inputs), passes) or max(1, self._initial_threads // passes)
        if threads != torch.get_num_threads():
            # sets this thread's count; the other inference threads set theirs before every batch
            torch.set_num_threads(threads)
        return self.model.encode(inputs)

    def _deliver(self, batch: list[_Entry], embeddings: torch.Tensor) -> None:
        """Hand each entry its row of ``embeddings`` (B, D), failing requests whose rows are unusable.

        A wrong shape fails the whole batch. A non-finite row (which JSON cannot carry)
        fails only the request it belongs to.
        """
        if tuple(embeddings.shape) != (len(batch), self.model.dim):
            logger.error("model %s: batch of %d returned shape %s", self.model.id, len(batch), tuple(embeddings.shape))
            shape = tuple(embeddings.shape)
            _fail_entries(
                batch,
                InferenceFailed(f"model {self.model.id} returned embeddings of shape {shape}, expected ({len(batch)}, {self.model.dim})"),
            )
            return
        finite = torch.isfinite(embeddings).all(dim=1).tolist()  # (B,)
        for row, entry, row_finite in zip(embeddings, batch, finite):
            request = entry.request
            if request.future.done():
                continue
            if not row_finite:
                logger.error("model %s: an embedding of a batch of %d is not finite", self.model.id, len(batch))
                request.future.set_exception(
                    InferenceFailed(f"model {self.model.id} returned a non-finite embedding for this request's items")
                )
                continue
            request.rows[entry.position] = row
            request.remaining -= 1
            if request.remaining == 0:
                request.future.set_result(torch.stack(request.rows))  # (N, D)

    def _describe_failure(self, error: Exception) -> ServiceError:
        """Map a forward-pass error to what the batch's callers receive.

        Running out of memory depends on the load, so it becomes 503 with Retry-After.
        Any other error becomes a 500 that names the model and the error.
        """
        if isinstance(error, ServiceError):
            return error
        if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # return the failed batch's blocks before the next one
            return Overloaded(
                f"model {self.model.id} ran out of memory on a batch of this size; retry later or send fewer items",
                retry_after_s=1,
            )
        return InferenceFailed(f"inference failed on model {self.model.id}: {type(error).__name__}: {error}")


def _fail_entries(batch: list[_Entry], failure: ServiceError) -> None:
    for entry in batch:
        if not entry.request.future.done():
            entry.request.future.set_exception(failure)
