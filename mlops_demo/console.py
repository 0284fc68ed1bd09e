"""Progress lines of the demo loop, time-stamped, flushed at once (the loop runs for minutes)."""

from __future__ import annotations

import time


def say(message: str) -> None:
    """Print ``message`` as ``[loop HH:MM:SS] message``."""
    print(f"[loop {time.strftime('%H:%M:%S')}] {message}", flush=True)
