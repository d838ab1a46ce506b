"""A front-end process: a gRPC server on the shared port (SO_REUSEPORT) over a ``RemoteCore``.

It never imports torch: it validates, tokenizes and translates, and the engine process
computes. On SIGTERM it drains: health NOT_SERVING, no new calls, calls in flight finish.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

# Each front end tokenizes on its own threads (--tokenizer-threads), one request per thread.
# The tokenizer's own thread pool (one thread per core, in every front end) would add N x cores
# threads that spin for work: on a 16-core GPU host they took 7-9 cores from the engine and the
# other front ends (docs/benchmarks.md). Set before the tokenizer library starts its pool.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from semserve.frontend.server import FrontEnd
from semserve.ipc.client import RemoteCore
from semserve.ipc.group import EngineGroup
from semserve.process.children import (
    GIL_SWITCH_INTERVAL_S, child_arguments, read_config, report, setup_logging, stop_requested,
)

log = logging.getLogger("semserve")


async def run(config, address: str, index: int, ready_fd: int) -> int:
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the handler below: a reload must not end the process
    addresses = address.split(",")
    core = RemoteCore(addresses[0]) if len(addresses) == 1 else EngineGroup(addresses)
    await core.start()
    frontend = FrontEnd(core, config, index=index, reuse_port=True)
    try:
        port = await frontend.start()
    except Exception as exc:
        report(ready_fd, f"failed {exc}")
        await core.close()
        return 1
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, frontend.reload_credentials)
    report(ready_fd, f"ready {port}")
    await stop_requested()
    await frontend.stop(config.grace_period_s)
    await core.close()
    return 0


def main() -> int:
    parser = child_arguments("semserve front-end process")
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args()
    config = read_config(args.config)
    setup_logging(config, f"frontend-{args.index}")
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return asyncio.run(run(config, args.address, args.index, args.ready_fd))


if __name__ == "__main__":
    sys.exit(main())
