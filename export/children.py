"""Child processes that do not outlive this one."""
from __future__ import annotations


def die_with_parent() -> None:
    """Use as `preexec_fn`: in the child, before exec, ask Linux to kill it when the thread that started it dies,
    even by SIGKILL, so an interrupted export or server leaves no llama.cpp tool running on its own. Elsewhere
    (no prctl) the child runs as usual. Start such children from a thread that lives as long as they should."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
