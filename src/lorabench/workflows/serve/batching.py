"""Concurrent requests scored together: each request puts its texts on an asyncio queue, and one worker takes
what arrives within a few milliseconds (up to a batch size), runs the model once in a thread, and hands each
request its rows. One model call at a time also keeps memory bounded however many clients connect."""

from __future__ import annotations

import asyncio

import numpy as np

from lorabench.workflows.serve.metrics import ServeMetrics


class QueueFull(Exception):
    """More texts are waiting than the server holds; the client should retry shortly."""


class BatchingWorker:
    """The single consumer of the request queue: gathers requests, scores them in one call, answers each.

    `queued_texts` counts texts submitted and not yet scored (or dropped); `submit` refuses a request that would
    take it past `max_queued_texts`, so a flood of clients costs bounded memory instead of an ever longer queue.
    """

    def __init__(self, predict_proba, max_batch: int, gather_seconds: float, max_queued_texts: int,
                 metrics: ServeMetrics):  # fmt: skip
        self.predict_proba = predict_proba
        self.max_batch = max_batch
        self.gather_seconds = gather_seconds
        self.max_queued_texts = max_queued_texts
        self.metrics = metrics
        self.queue: asyncio.Queue | None = None
        self.queued_texts = 0
        self.metrics.queued.set_function(lambda: self.queued_texts)
        self.stats = {"requests": 0, "texts": 0, "batches": 0}

    async def submit(self, texts: list[str], timeout: float) -> np.ndarray:
        """The texts' probabilities; QueueFull at once when the queue is full, TimeoutError after `timeout`
        seconds (the texts are then dropped from their batch unless already being scored)."""
        if self.queued_texts + len(texts) > self.max_queued_texts:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self.queued_texts += len(texts)  # no await since the check: no other request can pass it meanwhile
        self.queue.put_nowait((texts, future))
        return await asyncio.wait_for(future, timeout)  # a timeout cancels the future: _score then skips it

    async def run(self) -> None:
        self.queue = asyncio.Queue()
        carried = None
        while True:
            first = carried or await self.queue.get()
            carried = None
            await asyncio.sleep(self.gather_seconds)  # let concurrent requests join this batch
            batch, size = [first], len(first[0])
            while size < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                if size + len(item[0]) > self.max_batch:
                    carried = item  # first in the next batch
                    break
                batch.append(item)
                size += len(item[0])
            try:
                await self._score(batch)
            finally:
                self.queued_texts -= size

    async def _score(self, batch: list) -> None:
        batch = [(texts, future) for texts, future in batch if not future.done()]  # clients that left
        if not batch:
            return
        texts = [text for request_texts, _ in batch for text in request_texts]
        try:
            probabilities = await asyncio.to_thread(self.predict_proba, texts)
        except Exception as err:  # answer every waiting request with the failure instead of hanging them
            self.metrics.errors.labels("scoring").inc()
            for _, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        self.stats["batches"] += 1
        self.metrics.batch.observe(len(texts))
        self.metrics.texts.inc(len(texts))
        start = 0
        for request_texts, future in batch:
            self.stats["requests"] += 1
            self.stats["texts"] += len(request_texts)
            if not future.done():
                future.set_result(probabilities[start : start + len(request_texts)])
            start += len(request_texts)
