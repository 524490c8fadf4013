"""Is a process still alive? Used to tell a killed run's leftovers (temp files, RUNNING MLflow runs) from live ones."""
from __future__ import annotations

import os


def pid_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine (or we may not signal it: assume alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
