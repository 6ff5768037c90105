"""Scoring coalesced across the requests of one event-loop turn.

A batch-1 request's onnxruntime call cost 160-400 us in the service, against ~60-100 us in
a loop of calls alone (2026-11-29, with one model input per column): between requests the
web stack evicts the session's memory from the CPU caches, and each call pays onnxruntime's
per-call costs again. Requests arrive in waves (the prediction log's group commit answers
its waiters together, and clients send again together), so the requests that reach the
scorer in one turn of the event loop are scored in one call. Nothing waits on a timer: the
call runs as the next callback of the same loop, and a request alone is scored alone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import numpy as np

from serving.model import ServedModel

log = logging.getLogger(__name__)


@dataclass
class _Request:
    model: ServedModel
    records: list[dict]
    served_at: object
    done: asyncio.Future


class ScoringCoalescer:
    """``await coalescer.score(model, records, served_at)``: :meth:`ServedModel.score`, with
    the rows of every request queued in the same loop turn (for the same model) scored by
    one :meth:`ServedModel.predict` call. If that call fails, each request is scored on its
    own, so only a request that fails by itself gets the error. Requests are coalesced per
    event loop (each loop flushes its own)."""

    def __init__(self) -> None:
        self._queued: dict[asyncio.AbstractEventLoop, list[_Request]] = {}

    async def score(self, model: ServedModel, records: list[dict], served_at) -> list[dict]:
        loop = asyncio.get_running_loop()
        queued = self._queued.get(loop)
        if queued is None:
            queued = self._queued[loop] = []
            loop.call_soon(self._flush, loop)
        request = _Request(model, records, served_at, loop.create_future())
        queued.append(request)
        return await request.done

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        queued = self._queued.pop(loop)
        by_model: dict[int, list[_Request]] = {}
        for request in queued:
            by_model.setdefault(id(request.model), []).append(request)
        for requests in by_model.values():
            if len(requests) == 1:
                self._score_alone(requests[0])
                continue
            model = requests[0].model
            try:
                probability, hours = model.predict([r for q in requests for r in q.records])
            except Exception:
                log.warning("coalesced scoring failed; scoring each request alone", exc_info=True)
                for request in requests:
                    self._score_alone(request)
                continue
            start = 0
            for request in requests:
                end = start + len(request.records)
                self._settle(request, probability[start:end], hours[start:end])
                start = end

    def _score_alone(self, request: _Request) -> None:
        try:
            probability, hours = request.model.predict(request.records)
        except Exception as exc:
            if not request.done.done():
                request.done.set_exception(exc)
            return
        self._settle(request, probability, hours)

    @staticmethod
    def _settle(request: _Request, probability: np.ndarray, hours: np.ndarray) -> None:
        if request.done.done():  # cancelled (BentoML's timeout): nobody waits for it
            return
        try:
            rows = request.model.log_rows(request.records, request.served_at, probability, hours)
        except Exception as exc:
            request.done.set_exception(exc)
        else:
            request.done.set_result(rows)
