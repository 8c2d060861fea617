import contextlib
import logging
import os
import sys

from clipflow.errors import ClipflowError


@contextlib.contextmanager
def redirect_to_log(path):
    """Send this process's stdout, stderr and logging, and those of its children, to `path`.

    img2dataset prints from worker processes, so the file descriptors themselves are redirected.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True)
        try:
            yield
        except ClipflowError as error:  # the job's log says why it failed, as well as Snakemake's
            logging.getLogger("clipflow").error("%s", error)
            raise
        except Exception:
            logging.getLogger("clipflow").exception("the job failed")
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
