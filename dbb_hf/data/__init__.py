"""Benchmark loaders: each returns a DatasetDict (train / validation / test) with the
features contract of ``common.py`` (``image``, ``label``, ``spurious``, ``group``,
``example_id``). Example::

    from dbb_hf.data import load_benchmark, group_counts
    celeba = load_benchmark("celeba", "data/celeba", split_by_identity=True, seed=0)
    group_counts(celeba)["test"]  # {"not_blond/female": ..., ..., "blond/male": ...}
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple, Optional

from datasets import DatasetDict

from .celeba import CelebAConfig, load_celeba
from .common import DatasetFormatError, group_counts, group_names
from .hub import HubConfig, load_hub
from .metashift import MetaShiftConfig, load_metashift
from .toy import ToyConfig, load_toy
from .waterbirds import WaterbirdsConfig, load_waterbirds


class Benchmark(NamedTuple):
    config_class: type
    loader: Callable
    location_field: Optional[str]  # the config field that ``data_dir`` fills (None: generated data)


REGISTRY = {
    "toy": Benchmark(ToyConfig, load_toy, None),
    "celeba": Benchmark(CelebAConfig, load_celeba, "data_dir"),
    "waterbirds": Benchmark(WaterbirdsConfig, load_waterbirds, "data_dir"),
    "metashift": Benchmark(MetaShiftConfig, load_metashift, "data_dir"),
    "hub": Benchmark(HubConfig, load_hub, "path"),
}
BENCHMARKS = tuple(REGISTRY)


def benchmark_config(name: str, data_dir: str | None = None, **options):
    """The config dataclass of benchmark ``name`` built from ``data_dir`` and ``options``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; choose one of {list(BENCHMARKS)}")
    benchmark = REGISTRY[name]
    valid = [f.name for f in dataclasses.fields(benchmark.config_class) if f.name != benchmark.location_field]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for benchmark {name!r}; valid options: {valid}")
    if benchmark.location_field is not None:
        if data_dir is None:
            raise ValueError(f"benchmark {name!r} needs data_dir (its {benchmark.location_field})")
        options[benchmark.location_field] = str(data_dir)
    return benchmark.config_class(**options)


def load_benchmark(name: str, data_dir: str | None = None, **options) -> DatasetDict:
    """Load benchmark ``name`` (one of ``BENCHMARKS``) from ``data_dir``.

    ``data_dir`` is the data folder (for "hub": the Hub id or local folder; ignored for
    the generated "toy" benchmark); ``options`` are fields of the benchmark's config.
    """
    config = benchmark_config(name, data_dir, **options)
    return REGISTRY[name].loader(config)


__all__ = [
    "BENCHMARKS",
    "REGISTRY",
    "Benchmark",
    "CelebAConfig",
    "DatasetFormatError",
    "HubConfig",
    "MetaShiftConfig",
    "ToyConfig",
    "WaterbirdsConfig",
    "benchmark_config",
    "group_counts",
    "group_names",
    "load_benchmark",
    "load_celeba",
    "load_hub",
    "load_metashift",
    "load_toy",
    "load_waterbirds",
]
