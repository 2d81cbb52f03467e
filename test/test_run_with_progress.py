"""conftest.run_with_progress, the limit for the tests' long subprocesses (benches): a hung command (no output, no
CPU time) is stopped after the stall limit, a slow one that keeps working is not, however long it takes."""
from __future__ import annotations

import sys
import time

import pytest

from conftest import run_with_progress

BUSY_SILENT = "import time\nt = time.time()\nwhile time.time() - t < 5: pass\nprint('done')"


def test_a_command_that_keeps_computing_silently_is_not_stopped():
    run = run_with_progress([sys.executable, "-c", BUSY_SILENT], stall_s=2.5)
    assert run.returncode == 0 and run.stdout.strip() == "done"


def test_a_hung_command_is_stopped_after_the_stall_limit():
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="no output and no CPU time for 2.5 s"):
        run_with_progress([sys.executable, "-c", "import sys, time; print('waiting', file=sys.stderr, flush=True); "
                                                 "time.sleep(60)"], stall_s=2.5)
    assert time.monotonic() - started < 30
