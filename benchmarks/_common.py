"""Helpers shared by the benchmarks: the machine they ran on, interleaved timing with
medians, and the PASS/FAIL line of a ratio against its target.

The machines these run on are shared and noisy, so a benchmark never compares numbers
from two runs: both variants are timed inside one run, alternately (ABBA order, so a
change of load hits both equally), and the verdict uses medians over the repeats.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Any, Callable, Mapping

import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict:
    """What the figures depend on: CPU, cores, load, library versions, GPU if any."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_1_5_15": tuple(round(x, 2) for x in load),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def print_machine(title: str, settings: Mapping[str, Any] | None = None) -> None:
    print(f"== {title}")
    info = machine_info()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if settings:
        print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))


def start_device(args, title: str, skip_note: str = "") -> torch.device | None:
    """``args.device`` with ``args.threads`` set and the machine printed; None (after saying
    so) when it names CUDA and there is none, so that a GPU benchmark is skipped, not failed."""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"skipped: no CUDA device{skip_note}")
        return None
    torch.set_num_threads(args.threads)
    print_machine(title, vars(args))
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer reads the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each variant (medians are reported)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: on a shared, loaded machine, intra-op threads that wait for "
        "each other at every op make timings slower and far noisier)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def interleaved(variants: Mapping[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall-clock seconds of each variant per repeat, the variants alternating.

    The order flips every repeat (A B, B A, A B, ...), so a slow drift of the machine's
    load favours neither. ``warmup`` untimed rounds come first (allocator, kernels).
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    return times


def median(values) -> float:
    return statistics.median(values)


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-repeat ratios of two variants timed back to back (robust to slow load drift)."""
    return [n / d for n, d in zip(numerator, denominator)]


def describe_times(label: str, seconds: list[float], items: int, unit: str = "images") -> None:
    m = median(seconds)
    spread = f"min {min(seconds):.3f} s, max {max(seconds):.3f} s"
    print(f"  {label:<34} median {m:.3f} s for {items} {unit} = {items / m:8.2f} {unit}/s  ({spread})")


def verdict(name: str, value: float, target: float, *, at_least: bool = True) -> bool:
    """Print ``name: value (target >= t): PASS/FAIL`` and return whether it passed."""
    passed = value >= target if at_least else value <= target
    sign = ">=" if at_least else "<="
    print(f"RESULT {name}: {value:.3f} (target {sign} {target:g}) {'PASS' if passed else 'FAIL'}")
    return passed


def finish(results: list[bool]) -> int:
    """Exit status: 0 when every verdict passed, 1 otherwise."""
    print("ALL PASS" if all(results) else f"{results.count(False)} of {len(results)} FAILED")
    return 0 if all(results) else 1


# ------------------------------------------------------------------ FLOPs


def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out, query, key, value)


class FlopCounter:
    """FLOPs of every op under it, by the formulas of ``torch.utils.flop_counter``.

    FlopCounterMode itself cannot run integrated gradients (its module tracker's backward
    hooks break captum's ``autograd.grad``), so this mode applies the same formula table
    (``FlopCounterMode().flop_registry``), plus one for the CPU's fused attention kernel,
    which the table lacks (every attention layer would count 0 FLOPs on the CPU), and
    decomposes the composite ops that inference mode leaves whole, as FlopCounterMode does. FLOPs
    spent inside a module given to :meth:`scope` are also summed under its name.
    """

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import FlopCounterMode, shape_wrapper

        aten = torch.ops.aten
        registry = dict(FlopCounterMode(display=False).flop_registry)
        registry[aten._scaled_dot_product_flash_attention_for_cpu] = shape_wrapper(_cpu_sdpa)
        registry[aten._scaled_dot_product_flash_attention_for_cpu_backward] = shape_wrapper(_cpu_sdpa_backward)
        self.total, self.scoped, self._open = 0, {}, []
        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                formula = registry.get(func._overloadpacket)
                if formula is None and func is not torch.ops.prim.device.default:
                    # Under torch.inference_mode (masking, scoring) composite ops such as
                    # linear, matmul, conv2d and einsum arrive whole, and the table has no
                    # formula for them: run their decomposition here, so that its mm/bmm/
                    # convolution parts are counted (as FlopCounterMode does).
                    with self:
                        out = func.decompose(*args, **kwargs)
                    if out is not NotImplemented:
                        return out
                out = func(*args, **kwargs)
                if formula is not None:
                    flops = formula(*args, **kwargs, out_val=out)
                    counter.total += flops
                    for name in counter._open:
                        counter.scoped[name] = counter.scoped.get(name, 0) + flops
                return out

        self.mode = Mode()

    def scope(self, name: str, module: torch.nn.Module):
        """Also count the FLOPs of ``module``'s forward passes under ``name``; returns the hook handles."""
        self.scoped.setdefault(name, 0)
        return [module.register_forward_pre_hook(lambda *_: self._open.append(name)),
                module.register_forward_hook(lambda *_: self._open.remove(name))]

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)
