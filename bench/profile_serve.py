"""`jobwire serve` under cProfile, switched on and off by signals, for `bench_e2e drive --cprofile`.

SIGUSR1 starts profiling the event loop's thread, SIGUSR2 stops it and writes the stats to
`$JOBWIRE_BENCH_PROFILE` (then `<that>.done`). The window is the measured load only, not the
start. cProfile slows every Python call several times over, so its times say little; what it
counts does not depend on the machine: Python-level calls per run, before and after a change.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path
from typing import Any

from jobwire.cli import main

_profile = cProfile.Profile()
_out = Path(os.environ["JOBWIRE_BENCH_PROFILE"])


def _on(*_: Any) -> None:
    _profile.enable()


def _off(*_: Any) -> None:
    _profile.disable()
    _profile.dump_stats(str(_out))
    _out.with_name(_out.name + ".done").touch()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _on)
    signal.signal(signal.SIGUSR2, _off)
    sys.argv = ["jobwire", "serve"]
    main()
