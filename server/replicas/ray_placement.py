"""Where engine replicas run on Ray, shared by `serve --replicas`, `llmdoctor batch` and `llmdoctor kfold`.

    start_ray(address, replicas)            -> joins ADDR, or starts a local Ray sized for the replicas
    replica_placement(settings, replicas, local) -> (Ray resources per replica, torch threads per replica)
    replica_error_message(exc)              -> the replica's own error line out of Ray's wrapping

One GPU per replica where the cluster has GPUs (and --device is not cpu); otherwise one logical CPU
each, and a local Ray's cores shared out as torch threads (more would fight over the cores).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from llmdoctor.server.config import ServerSettings


def start_ray(address: str | None, replicas: int, namespace: str | None = None) -> None:
    import ray

    local = address is None
    ray.init(address=address, namespace=namespace, include_dashboard=False, logging_level=logging.WARNING,
             num_cpus=max(os.cpu_count() or 1, replicas) if local else None,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})


def replica_placement(settings: ServerSettings, replicas: int, local: bool) -> tuple[dict[str, Any], int | None]:
    """Threads only for a local Ray (this machine's cores); on a cluster each node's torch decides."""
    import ray

    # not started yet: the app is being built for a cluster (`serve run`, RayService) that places it there
    resources = ray.cluster_resources() if ray.is_initialized() else {}
    if settings.device != "cpu" and resources.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}, None
    return {"num_cpus": 1}, max(1, int(resources["CPU"]) // replicas) if local and resources else None


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception): ")


def replica_error_message(exc: BaseException) -> str:
    """The replica's own error line. Ray carries an actor's exception to the driver as traceback
    text inside its own errors (no `__cause__` chain), so this is the last `SomeError: message`
    line of that text that is not one of Ray's; failing that, the message's last line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    ours = [line for line in lines if _ERROR_LINE.match(line) and not line.startswith("ray.")]
    if ours:
        return ours[-1]
    return lines[-1] if lines else type(exc).__name__
