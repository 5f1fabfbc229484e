"""``ray start`` for the coordinator's private Ray (:mod:`coordinator.local_ray`), without Ray
Client's server: ``python -m coordinator.ray_head start --head ...``.

``ray start --head`` starts Ray Client's server (a Python process on the fixed port 10001)
whenever ``grpc`` is importable, and has no switch to leave it out. The coordinator joins its
private Ray as a driver and never through Ray Client, so that server only costs a process
(about 1.2 s of CPU while the job's setup runs, measured with ``hefl bench``) and a listening
port that a second coordinator's private Ray on the same host would want too. ``ray start``
decides whether to start it by asking whether Ray Client's dependencies are installed; this
wrapper answers no. Clusters started with ``ray start`` itself (``deploy/``) keep their client
server.
"""

from __future__ import annotations

import sys

import ray.scripts.scripts as ray_start


def _no_ray_client() -> ImportError:
    return ImportError("hefl's private Ray runs no Ray Client server")


def main() -> int:
    ray_start.get_ray_client_dependency_error = _no_ray_client
    ray_start.main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
