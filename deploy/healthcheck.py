"""Container health checks (Docker HEALTHCHECK and Kubernetes exec probes).

  python deploy/healthcheck.py http            GET /healthz answers 200 (readiness: Temporal reachable too)
  python deploy/healthcheck.py tcp             the HTTP port accepts connections (liveness)
  python deploy/healthcheck.py worker          this container's worker polls the task queue, or
                                               Temporal is unreachable (liveness: not the worker's fault)
  python deploy/healthcheck.py worker --strict this container's worker polls (readiness)
Exit 0 = healthy. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

TIMEOUT = 10.0
# Pollers long-poll for ~60 s; a poller silent for longer than this is gone.
POLLER_FRESHNESS = timedelta(minutes=3)


def check_http(port: int) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=TIMEOUT) as response:
            return response.status == 200, f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except OSError as exc:
        return False, str(exc)


def check_tcp(port: int) -> tuple[bool, str]:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        return True, "accepting connections"
    except OSError as exc:
        return False, str(exc)


async def pollers(client, task_queue: str) -> list:
    from temporalio.api.enums.v1 import TaskQueueKind, TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    found = []
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        response = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=client.namespace,
                task_queue=TaskQueue(name=task_queue, kind=TaskQueueKind.TASK_QUEUE_KIND_NORMAL),
                task_queue_type=kind,
            ),
            timeout=timedelta(seconds=TIMEOUT),
        )
        found.extend(response.pollers)
    return found


def polling_here(found: list, hostname: str, now: datetime) -> bool:
    """A poller of this host (the SDK's identity is pid@hostname) seen recently."""
    for poller in found:
        seen = poller.last_access_time.ToDatetime(tzinfo=timezone.utc)
        if poller.identity.endswith(f"@{hostname}") and now - seen < POLLER_FRESHNESS:
            return True
    return False


async def check_worker(strict: bool, hostname: str | None = None) -> tuple[bool, str]:
    from dunning.config import TASK_QUEUE, Settings
    from dunning.temporal import connect

    settings = Settings()
    hostname = hostname or socket.gethostname()
    try:
        client = await asyncio.wait_for(connect(settings), TIMEOUT)
        found = await asyncio.wait_for(pollers(client, TASK_QUEUE), 2 * TIMEOUT)
    except (RuntimeError, OSError, asyncio.TimeoutError) as exc:
        if strict:
            return False, f"Temporal at {settings.temporal_target} unreachable: {exc}"
        return True, f"Temporal at {settings.temporal_target} unreachable (not this worker's fault): {exc}"
    if polling_here(found, hostname, datetime.now(timezone.utc)):
        return True, f"polling task queue {TASK_QUEUE!r}"
    return False, f"no poller from {hostname} on task queue {TASK_QUEUE!r}"


def main(argv: list[str]) -> int:
    mode = argv[0] if argv else ""
    if mode in ("http", "tcp"):
        from dunning.config import Settings

        port = Settings().dunning_http_port
        ok, detail = (check_http if mode == "http" else check_tcp)(port)
    elif mode == "worker":
        ok, detail = asyncio.run(check_worker(strict="--strict" in argv))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    print(f"{mode}: {'ok' if ok else 'FAILED'}: {detail}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
