"""`python -m fastbt.launch [torchrun options] -m fastbt.cli pretrain ...`: torchrun, with fastbt's
exit statuses. Every argument is torchrun's; the scripts in scripts/ launch through it.

torchrun ends with status 1 and a ChildFailedError traceback whenever a child fails, whatever the
child's status. A fastbt refusal (bad config, a run directory in use, ...) is one line from rank 0
and status 2 on every rank: when the first failed child exited with status 2 (and the others too,
or were stopped by torchrun for it), this launcher exits with 2 and prints nothing more; any other
failure is reported as torchrun reports it (status 1).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

USER_ERROR = 2


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(argv)
    # torchrun sets 1 thread per process when several share a node, with a warning; say it quietly
    if args.nproc_per_node not in ("1", 1) and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = "1"
    held = HoldFailureLogs()
    AGENT_LOG.addFilter(held)
    try:
        run(args)
    except ChildFailedError as err:
        if refused(err):
            return USER_ERROR  # the children said why, in one line
        held.release()
        raise  # as torchrun reports it (traceback and failure summary), status 1
    finally:
        AGENT_LOG.removeFilter(held)
    return 0


# The agent logs each child it stops and each failure as it happens; those lines are held back
# until we know whether the failure was a refusal (then they would only repeat it).
AGENT_LOG = logging.getLogger("torch.distributed.elastic.multiprocessing.api")


class HoldFailureLogs(logging.Filter):
    PATTERNS = ("closing signal", "failed (exitcode")

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if any(p in record.getMessage() for p in self.PATTERNS):
            self.records.append(record)
            return False
        return True

    def release(self) -> None:
        AGENT_LOG.removeFilter(self)
        for record in self.records:
            AGENT_LOG.handle(record)


def refused(err) -> bool:
    """A fastbt refusal: the first child to fail exited with 2, and every other failed child exited
    with 2 too or was stopped by torchrun (SIGTERM) because of it."""
    _, first = err.get_first_failure()
    stopped = (USER_ERROR, -signal.SIGTERM)
    return first.exitcode == USER_ERROR and all(f.exitcode in stopped for f in err.failures.values())


if __name__ == "__main__":
    sys.exit(main())
