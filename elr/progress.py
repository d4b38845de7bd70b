"""How a long job's progress reads: one format for every elapsed time, ETA and projection that the trainer,
the study runner and the benchmark print (pure; no torch)."""
from __future__ import annotations

import math


def duration(seconds: float) -> str:
    """A time as a person reads it: 42 s, 12 min, 3 h 12 min, 2 d 5 h, 5,311 d (an ETA of 458,912,242 s says
    nothing at a glance)."""
    if not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    if s < 100:
        return f"{s} s"
    minutes, hours = s // 60, s // 3600
    if hours == 0:
        return f"{minutes} min"
    if hours < 24:
        return f"{hours} h {minutes % 60} min"
    days = hours // 24
    return f"{days} d {hours % 24} h" if days < 10 else f"{days:,} d"
