"""`make demo` repairs the toy's spurious correlation: the main job's own outcome, at its defaults.

The other demo tests run small configurations to check mechanics; none of them would notice
the demo's retrained model no longer beating ERM, which is how a regression (74.3 -> 73.0:
minority groups repaired, a majority group lost) once slipped through. This test runs the
demo exactly as `make demo` does (the shipped miniature prior, the preset's every value) and
asserts the method's claim on its test split. It takes a few minutes on 2 CPU cores.
"""

import json

import pytest

from dbb_hf.cli import main

# The worst-group gain the demo must keep (it measures +19.7 points: 74.3 -> 94.0).
MIN_GAIN = 0.10


# The whole demo: about 4 minutes on 2 idle cores, over the suite's 900 s timeout on a loaded machine.
@pytest.mark.timeout(2400)
def test_demo_defaults_raise_worst_group_accuracy(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    erm, retrained = report["erm"], report["retrained"]
    gain = retrained["worst_group_accuracy"] - erm["worst_group_accuracy"]
    assert gain >= MIN_GAIN, (erm["per_group_accuracy"], retrained["per_group_accuracy"])
    assert report["gain_worst_group_accuracy"] == pytest.approx(gain)
    # Repairing the minority groups must not cost the average: no group traded for another.
    assert retrained["average_accuracy"] > erm["average_accuracy"]
    assert min(retrained["per_group_accuracy"].values()) == retrained["worst_group_accuracy"]
