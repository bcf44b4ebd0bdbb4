"""``python -m gateway.integrations MODULE:ATTR``: run a framework agent as a gateway worker.

``ATTR`` (default ``agent``) names a pydantic-ai ``Agent``, an OpenAI Agents SDK ``Agent``, or
an object with ``async play(turn)`` (an adapter, e.g. a configured ``PydanticAIAgent``).
Redis comes from ``REDIS_URL`` and the worker settings from ``GATEWAY_*``; SIGTERM drains
(see :func:`gateway.integrations.run_worker`).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
from typing import Any

from gateway.agent.worker import Agent
from gateway.integrations import run_worker


def adapter_for(obj: Any) -> Agent:
    """The worker ``Agent`` for ``obj``: itself when it has ``play``, else the adapter of its
    framework (told by the module its class comes from).

    Raises:
        TypeError: ``obj`` is neither an adapter nor an agent of a supported framework.
    """
    if callable(getattr(obj, "play", None)):
        return obj  # type: ignore[no-any-return]
    framework = type(obj).__module__.split(".")[0]
    if framework == "pydantic_ai":
        from gateway.integrations.pydantic_ai import PydanticAIAgent

        return PydanticAIAgent(obj)
    if framework == "agents":
        from gateway.integrations.openai_agents import OpenAIAgentsAgent

        return OpenAIAgentsAgent(obj)
    raise TypeError(f"{type(obj).__qualname__} is not a pydantic-ai or Agents SDK agent")


def main(argv: list[str] | None = None) -> None:
    """Parse ``MODULE:ATTR`` and play runs with it until SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m gateway.integrations", description=__doc__)
    parser.add_argument("target", help="MODULE:ATTR of the agent (ATTR defaults to 'agent')")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    module, _, attr = args.target.partition(":")
    try:
        agent = adapter_for(getattr(importlib.import_module(module), attr or "agent"))
    except (ImportError, AttributeError, TypeError) as exc:
        parser.error(f"{args.target}: {exc}")
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(run_worker(agent))


if __name__ == "__main__":
    main()
