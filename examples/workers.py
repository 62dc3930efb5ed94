"""A worker serving the guide's workflows: `data-processor` and `multi-step-processor`.

Start a daemon, then this worker, then run a workflow in a session::

    nexusd serve --socket /tmp/nx/n.sock --data /tmp/nx/data &
    python examples/workers.py --socket /tmp/nx/n.sock &
    SID=$(nexus --socket /tmp/nx/n.sock session create --json | jq -r .session_id)
    nexus --socket /tmp/nx/n.sock run multi-step-processor --session $SID \\
        --input '{"data": "initial"}'

The daemon is found as ``nexus`` finds it: --socket or --url, else $NEXUS_SOCKET,
else $NEXUS_URL, else the default socket. ``nexus worker examples/workers.py:worker``
serves the same workflows. Ctrl-C (or SIGTERM) stops the worker cleanly.

`multi-step-processor` has five steps; after each, the session holds
`current_step`, `total_steps`, `accumulated_data` and `progress` (to 100 %), so
a run that is dispatched again (its worker died) or continued
(``nexus run ... --continue``) resumes at the step the session records.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any

import trio
from nexus_client import RunContext, Worker, open_client, steps


async def data_processor(ctx: RunContext, inputs: dict[str, Any]) -> dict[str, Any]:
    """Counts and sums the numbers in ``inputs["values"]``; keeps the result
    in the session under ``processed``."""
    values = [v for v in inputs.get("values", []) if isinstance(v, int | float)]
    await ctx.progress(1, 2, "validate")
    result = {"count": len(values), "sum": sum(values), "source": inputs.get("data")}
    await ctx.session.set("processed", result)
    await ctx.progress(2, 2, "store")
    return result


def _step(n: int) -> Any:
    def step(ctx: RunContext, inputs: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {f"step_{n}": f"processed {inputs.get('data', '')}".strip()}
    step.__name__ = f"step {n}"
    return step


worker = Worker({
    "data-processor": data_processor,
    "multi-step-processor": steps(*(_step(n) for n in range(1, 6))),
})


async def main(target: str | None) -> None:
    async with open_client(target, channel="worker", client_name="examples/workers.py") as c:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: worker.serve(c,
                                                                     task_status=task_status))
                print(f"serving {', '.join(worker.names)}", file=sys.stderr, flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break
    print(f"stopped after {worker.runs_done} runs", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", help="the daemon's Unix socket")
    parser.add_argument("--url", help="the daemon's ws:// or wss:// URL")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    trio.run(main, args.socket or args.url)
