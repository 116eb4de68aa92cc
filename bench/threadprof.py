"""Run a module like ``python -m`` under cProfile in EVERY thread, merging the stats into one file.

Layer: bench. ``python -m cProfile`` only sees the main thread, and a celeriac worker's main thread
just waits for a shutdown signal: the fetching, the solo pool's task runs, acks and lease renewals
all happen in other threads. Usage: ``python -m bench.threadprof OUT.prof MODULE [ARGS...]``.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_in_thread(frame: Any, event: str, arg: Any) -> None:
    # ``threading.setprofile`` calls this on a new thread's first event; enabling a cProfile
    # profiler there replaces this hook with cProfile's for the rest of that thread's life.
    profiler = cProfile.Profile()
    with _lock:
        _profiles.append(profiler)
    profiler.enable()


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit("usage: python -m bench.threadprof OUT.prof MODULE [ARGS...]")
    out, module, args = argv[0], argv[1], argv[2:]
    threading.setprofile(_start_in_thread)
    main_profiler = cProfile.Profile()
    sys.argv = [module, *args]
    main_profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
    finally:
        main_profiler.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        stats = pstats.Stats(main_profiler)
        with _lock:
            # Threads still running (daemons) are included: their counts are read under the GIL.
            for profiler in _profiles:
                stats.add(profiler)
        stats.dump_stats(out)


if __name__ == "__main__":
    main(sys.argv[1:])
