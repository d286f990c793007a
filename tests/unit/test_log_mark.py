"""verify reads the server's log from the switch's mark: a mark to the nanosecond, not the second."""

from __future__ import annotations

import re
import time

from nixmig.db.runtime import _host_time
from nixmig.remote.local import LocalTransport


def test_the_mark_is_the_host_clock_to_the_nanosecond() -> None:
    # whole seconds counted a failed login in the same second before the mark (a client between rotate
    # and the switch, expected) as one after it: verify failed a healthy run (e2e, twice under load)
    before = time.time()
    mark = _host_time(LocalTransport())
    after = time.time()
    assert re.fullmatch(r"\d+\.\d{9}", mark), mark
    assert before - 0.001 <= float(mark) <= after + 0.001
