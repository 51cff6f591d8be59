"""The processes of an ``accelerate launch`` run, started once with a long barrier timeout.

torch.distributed's default timeout (10 minutes with NCCL) ends a run whose other processes
wait longer than that for the main one, which a CelebA-size run does: the main process
alone decodes and checks 202,599 images, writes the report and pushes several GB to the
Hub. The process group is started by the first ``PartialState`` of the process, so
every dbb_hf entry point asks for its state here; a value different from the one the group
started with is reported, since it can no longer be changed.
"""

from __future__ import annotations

import warnings
from datetime import timedelta

DEFAULT_TIMEOUT_S = 4 * 3600
_started_with: list[int] = []  # the timeout this process's group started with


def process_state(timeout_s: int = DEFAULT_TIMEOUT_S):
    """This process's ``PartialState``; the first call starts the process group with ``timeout_s``."""
    from accelerate import PartialState

    if PartialState._shared_state:
        state = PartialState()
        started = _started_with[0] if _started_with else None
        if state.num_processes > 1 and started != timeout_s:
            was = "torch's default" if started is None else f"{started} s"
            warnings.warn(f"the processes were started with a barrier timeout of {was}; "
                          f"process_group_timeout={timeout_s} s cannot apply any more", stacklevel=2)
        return state
    from accelerate.utils import parse_flag_from_env

    _started_with[:] = [timeout_s]
    # `accelerate launch --cpu` says so in ACCELERATE_USE_CPU, which only AcceleratorState
    # reads: without cpu=True a bare PartialState of a CPU process group stays single-process.
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=timeout_s))
