"""The node process: owns the LMDB environment and coordinates every request of this node."""

from __future__ import annotations

import logging
import signal
import sys
from multiprocessing.synchronize import Event

from count.broker.router import Router
from count.config import Config
from count.coordinator import Coordinator
from count.lifecycle import die_with_parent
from count.logfilter import install_log_filter
from count.storage.engine import Storage

log = logging.getLogger("count.node")


def run_node_process(config: Config, endpoint: str, ready: Event) -> None:
    """Open storage, serve the broker until SIGTERM, then flush, compact and close."""
    die_with_parent()
    install_log_filter(config.log_level, "node")
    storage = Storage(
        config.data_dir,
        map_size_bytes=config.lmdb_map_size_mb << 20,
        buffer_points=config.memory_buffer_size,
        flush_interval_s=config.flush_interval_seconds,
    )
    coordinator = Coordinator(config, storage)
    router = Router(endpoint, coordinator, message_bytes_max=2 * config.max_body_bytes + (1 << 20))

    def stop(signum: int, _frame: object) -> None:
        router.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info("Node %s storage ready at %s", config.node_id, config.data_dir)
    ready.set()
    try:
        router.run()
    finally:
        router.close()
    log.info("Node %s stopping: flushing and compacting storage", config.node_id)
    storage.close(clean=True)
    log.info("Node %s storage closed cleanly", config.node_id)
    sys.exit(0)
