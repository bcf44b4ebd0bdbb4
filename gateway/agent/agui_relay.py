"""AG-UI relay: the :class:`~gateway.agent.worker.Agent` of ``gateway worker --agui-url URL``.

Each run command is played by POSTing an AG-UI ``RunAgentInput`` to an agent that serves AG-UI
over HTTP (pydantic-ai's ``AGUIAdapter``, ``ag-ui-langgraph``'s FastAPI endpoint, …) with
``accept: text/event-stream``, and writing every event it streams into the session's log,
mapped by :mod:`gateway.protocols.agui_in`, under the run's lease (fenced: a reaper or a
hand-over stops it). The agent's ``RUN_STARTED`` is not published again (the run already
started when it was accepted); its ``RUN_FINISHED`` / ``RUN_ERROR`` end the run. A cancel stops
reading (the connection is closed, so the agent sees the client go) and the worker publishes
``run.cancelled``. An unreachable agent, an error status, an invalid event or a stream that
ends without a terminal event ends the run as failed, with the reason.

The ``RunAgentInput`` is the command's ``agui`` field (the client's own input, as
``POST /v1/sessions/{sid}/agui`` stores it) with its ``runId`` set to the gateway's run id;
without it, one user message with the run's input, ``threadId`` = the session id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
from ag_ui.core import RunAgentInput, UserMessage
from pydantic import ValidationError

from gateway.agent.publisher import EventIn
from gateway.agent.worker import Turn
from gateway.core import events
from gateway.protocols.agui_in import RAW_TYPE, AguiInvalid, AguiMapper, SseParser, parse_json

log = logging.getLogger(__name__)

CANCEL_POLL_S = 0.2  # how often a relayed run checks for a cancel while the agent streams


class AguiRelayError(Exception):
    """The agent could not play the run (unreachable, error status, invalid stream); the
    worker ends the run as failed with this message."""


def run_input(turn: Turn) -> dict[str, Any]:
    """The ``RunAgentInput`` (AG-UI wire JSON) to send for ``turn``.

    Raises:
        AguiRelayError: the command's ``agui`` field is not a valid ``RunAgentInput``.
    """
    raw = turn.command.get("agui")
    if raw:
        try:
            given = RunAgentInput.model_validate_json(raw)
        except ValidationError as exc:
            raise AguiRelayError(f"the run's AG-UI input is not a RunAgentInput: {exc}") from None
        body = given.model_copy(update={"run_id": turn.run_id})
    else:
        body = RunAgentInput(
            thread_id=turn.session_id,
            run_id=turn.run_id,
            protocol_version="1.0",
            messages=[UserMessage(id=f"{turn.run_id}-input", content=turn.input)],
            state={},
            tools=[],
            context=[],
            forwarded_props={},
        )
    return body.model_dump(mode="json", by_alias=True)


class AguiRelay:
    """Plays runs on an AG-UI agent at ``url`` (see the module docstring).

    Args:
        url: the agent's AG-UI endpoint (POST). headers: sent with every request (e.g. the
            agent's own ``Authorization``). client: an ``httpx.AsyncClient`` to use (default:
            one of this relay, closed by :meth:`aclose`).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        self.url = url
        self.headers = {"accept": "text/event-stream", **(headers or {})}
        timeout = httpx.Timeout(connect=10.0, read=None, write=30.0, pool=10.0)
        self.client = client or httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()

    async def play(self, turn: Turn) -> None:
        """Relay one run; checks for a cancel while the agent streams, even when it is silent.

        Raises:
            Cancelled, LeaseLost: from ``turn.check()``; AguiRelayError: see the module.
        """
        if _has_progress(turn.prior):
            # The agent cannot continue a stream another worker was reading: replaying it would
            # publish its output twice.
            raise AguiRelayError(
                "this run was handed over mid-stream; an AG-UI agent cannot resume it"
            )
        reader = asyncio.create_task(self._relay(turn), name=f"agui-relay-{turn.run_id}")
        try:
            while True:
                done, _ = await asyncio.wait({reader}, timeout=CANCEL_POLL_S)
                if done:
                    return reader.result()
                await turn.check()
        finally:
            if not reader.done():
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)

    async def _relay(self, turn: Turn) -> None:
        body = run_input(turn)
        mapper = AguiMapper()
        try:
            async with self.client.stream(
                "POST", self.url, json=body, headers=self.headers
            ) as resp:
                if resp.status_code >= 300:
                    text = (await resp.aread())[:500].decode("utf-8", "replace")
                    raise AguiRelayError(
                        f"the AG-UI agent at {self.url} answered {resp.status_code}: {text}"
                    )
                parser = SseParser()
                async for chunk in resp.aiter_bytes():
                    for data in parser.feed(chunk):
                        if await self._forward(turn, mapper, data):
                            return
                for data in parser.close():
                    if await self._forward(turn, mapper, data):
                        return
        except httpx.HTTPError as exc:
            raise AguiRelayError(
                f"the AG-UI agent at {self.url} is unreachable: {type(exc).__name__}: {exc}"
            ) from None
        except AguiInvalid as exc:
            raise AguiRelayError(f"the AG-UI agent sent an invalid event: {exc.message}") from None
        raise AguiRelayError(
            f"the AG-UI agent at {self.url} ended its stream without RUN_FINISHED or RUN_ERROR"
        )

    async def _forward(self, turn: Turn, mapper: AguiMapper, data: str) -> bool:
        """Publish what one streamed event stands for; True once the run has ended."""
        batch: list[EventIn] = []
        for m in mapper.map(parse_json(data)):
            if m.type == "run.started":
                continue  # the run started when it was accepted
            if m.type == RAW_TYPE and not self._storable(turn, m.data):
                continue
            batch.append(EventIn(m.type, m.data, turn.run_id))
        if batch:
            run = turn.run
            await run.publisher.publish_batch(turn.session_id, batch, fence=run.fence)
        return any(e.type in events.TERMINAL for e in batch)

    def _storable(self, turn: Turn, data: dict[str, Any]) -> bool:
        # Pass-through events are not worth failing a run over (LangGraph's RAW events carry
        # whole graph states): one over the size or depth limit is left out, with a warning.
        try:
            events.encode(RAW_TYPE, data, turn.run_id, **turn.run.publisher.limits)
        except events.InvalidEvent as exc:
            kind = data.get("event", {}).get("type")
            log.warning("relay: run %s: %s event left out (%s)", turn.run_id, kind, exc.code)
            return False
        return True


def _has_progress(prior: dict[str, Any]) -> bool:
    return bool(prior.get("text") or prior.get("reasoning") or prior.get("tools"))
