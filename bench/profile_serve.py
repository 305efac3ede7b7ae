"""`jobwire serve` under a profiler, switched on and off by signals, for `bench_e2e drive --cprofile`
and `--opcodes`.

SIGUSR1 starts profiling the event loop's thread, SIGUSR2 stops it and writes the result to
`$JOBWIRE_BENCH_PROFILE` (then `<that>.done`). The window is the measured load only, not the
start. Neither profiler's times say much (each slows the interpreter several times over); what
they count does not depend on the machine:

* cProfile (the default): Python-level calls per run, before and after a change;
* `JOBWIRE_BENCH_OPCODES=1`: the bytecodes the interpreter executed per run, by function (a
  `sys.settrace` with `f_trace_opcodes`; written as a pickle of `{(file, line, name): (opcodes,
  frames)}`), which also sees the work done inside a function, not only the calls into it. Frames
  that began before the window are not counted (every run's own frames begin inside it).
"""

from __future__ import annotations

import cProfile
import os
import pickle
import signal
import sys
from collections import Counter
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from jobwire.cli import main

_profile = cProfile.Profile()
_out = Path(os.environ["JOBWIRE_BENCH_PROFILE"])
_opcodes: Counter[CodeType] = Counter()
_frames: Counter[CodeType] = Counter()


def _count(frame: FrameType, event: str, arg: Any) -> Any:
    if event == "opcode":
        _opcodes[frame.f_code] += 1
    return _count


def _enter(frame: FrameType, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    _frames[frame.f_code] += 1  # a coroutine's resumptions count too, as cProfile's calls do
    return _count


def _on(*_: Any) -> None:
    if os.environ.get("JOBWIRE_BENCH_OPCODES"):
        sys.settrace(_enter)
    else:
        _profile.enable()


def _off(*_: Any) -> None:
    if os.environ.get("JOBWIRE_BENCH_OPCODES"):
        sys.settrace(None)
        counts = {(c.co_filename, c.co_firstlineno, c.co_name): (n, _frames[c]) for c, n in _opcodes.items()}
        _out.write_bytes(pickle.dumps(counts))
    else:
        _profile.disable()
        _profile.dump_stats(str(_out))
    _out.with_name(_out.name + ".done").touch()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _on)
    signal.signal(signal.SIGUSR2, _off)
    sys.argv = ["jobwire", "serve"]
    main()
