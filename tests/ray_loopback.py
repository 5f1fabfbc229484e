"""``ray start`` for a multi-node Ray cluster that lives entirely on 127.0.0.1.

Ray replaces a loopback node address by the machine's routable address, and refuses worker
nodes when told to stay local (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``). Tests need several
nodes on one machine and no traffic off loopback, so this wrapper keeps the given address and
lets worker nodes join: ``python tests/ray_loopback.py start --address 127.0.0.1:PORT ...``.
"""

import os
import sys

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import ray._private.ray_constants as ray_constants  # noqa: E402
import ray._private.services as services  # noqa: E402
from ray.scripts.scripts import main  # noqa: E402

services.resolve_ip_for_localhost = lambda host: host
ray_constants.ENABLE_RAY_CLUSTER = True

if __name__ == "__main__":
    sys.exit(main())
