"""Every loader against a tiny fixture of its official layout, written by the test."""

import os
import shutil

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature, Value
from PIL import Image

from dbb_hf.data import (
    BENCHMARKS,
    CelebAConfig,
    DatasetFormatError,
    HubConfig,
    MetaShiftConfig,
    WaterbirdsConfig,
    group_counts,
    group_names,
    load_benchmark,
    load_celeba,
    load_hub,
    load_metashift,
    load_waterbirds,
)
from dbb_hf.data.celeba import identity_split

SPLITS = ["train", "validation", "test"]


def write_image(path, value, size=(6, 8)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, (value % 256, 0, 0)).save(path)


def assert_contract(dataset, label_names, spurious_names):
    assert list(dataset) == SPLITS
    for split in SPLITS:
        features = dataset[split].features
        assert isinstance(features["image"], ImageFeature)
        assert features["label"] == ClassLabel(names=label_names)
        assert features["spurious"] == ClassLabel(names=spurious_names)
        assert features["group"] == Value("int32")
        assert features["example_id"] == Value("string")
        rows = dataset[split].select_columns(["label", "spurious", "group"]).to_pandas()
        assert (rows["group"] == rows["label"] * len(spurious_names) + rows["spurious"]).all()


def rows_by_id(split):
    return {r["example_id"]: r for r in split.select_columns(["example_id", "label", "spurious", "group"])}


# ---------------------------------------------------------------- Waterbirds

WATERBIRDS_ROWS = [  # (img_filename, y, split, place)
    ("001.Albatross/a_0.jpg", 1, 0, 1),
    ("001.Albatross/a_1.jpg", 1, 0, 1),
    ("001.Albatross/a_2.jpg", 1, 0, 0),
    ("002.Sparrow/s_0.jpg", 0, 0, 0),
    ("002.Sparrow/s_1.jpg", 0, 0, 0),
    ("002.Sparrow/s_2.jpg", 0, 0, 1),
    ("001.Albatross/a_3.jpg", 1, 1, 0),
    ("002.Sparrow/s_3.jpg", 0, 1, 1),
    ("001.Albatross/a_4.jpg", 1, 2, 1),
    ("002.Sparrow/s_4.jpg", 0, 2, 0),
    ("002.Sparrow/s_5.jpg", 0, 2, 1),
]


@pytest.fixture
def waterbirds_dir(tmp_path):
    root = tmp_path / "waterbird_complete95_forest2water2"
    for i, (name, *_rest) in enumerate(WATERBIRDS_ROWS):
        write_image(str(root / name), i * 20)
    metadata = pd.DataFrame(WATERBIRDS_ROWS, columns=["img_filename", "y", "split", "place"])
    metadata.insert(0, "img_id", range(1, len(metadata) + 1))
    metadata["place_filename"] = "/l/lake/00000001.jpg"
    metadata.to_csv(root / "metadata.csv", index=False)
    return root


def test_waterbirds_official_layout(waterbirds_dir):
    dataset = load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))
    assert_contract(dataset, ["landbird", "waterbird"], ["land", "water"])
    assert group_names(dataset["train"].features) == ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
    for index, split in enumerate(SPLITS):
        expected = {name: (y, place) for name, y, s, place in WATERBIRDS_ROWS if s == index}
        rows = rows_by_id(dataset[split])
        assert {k: (r["label"], r["spurious"]) for k, r in rows.items()} == expected
    assert group_counts(dataset)["train"] == {
        "landbird/land": 2, "landbird/water": 1, "waterbird/land": 1, "waterbird/water": 2,
    }
    # example_id names the file the image was read from.
    first = dataset["validation"][0]
    assert first["example_id"] == "001.Albatross/a_3.jpg"
    assert first["image"].getpixel((0, 0))[0] == pytest.approx(6 * 20, abs=3)


def test_waterbirds_is_stable_across_loads(waterbirds_dir):
    first = load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))
    second = load_benchmark("waterbirds", str(waterbirds_dir))
    for split in SPLITS:
        assert list(first[split]["example_id"]) == list(second[split]["example_id"])
        # Same content -> same fingerprint, so cached stages are reused on a rerun.
        assert first[split]._fingerprint == second[split]._fingerprint


def test_waterbirds_errors_name_the_problem(waterbirds_dir):
    os.remove(waterbirds_dir / "002.Sparrow/s_4.jpg")
    with pytest.raises(DatasetFormatError, match=r"s_4\.jpg"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))

    metadata = pd.read_csv(waterbirds_dir / "metadata.csv")
    metadata.drop(columns=["place"]).to_csv(waterbirds_dir / "metadata.csv", index=False)
    with pytest.raises(DatasetFormatError, match=r"'place'.*img_filename"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))

    metadata.assign(split=metadata["split"].replace(2, 3)).to_csv(waterbirds_dir / "metadata.csv", index=False)
    with pytest.raises(DatasetFormatError, match=r"'split'.*\[3\]"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))

    os.remove(waterbirds_dir / "metadata.csv")
    with pytest.raises(DatasetFormatError, match="metadata.csv"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))


# ---------------------------------------------------------------- CelebA

ATTRIBUTES = ["5_o_Clock_Shadow", "Blond_Hair", "Eyeglasses", "Male"]


def celeba_rows(num_identities=24, per_identity=3):
    """(file, blond, male, eyeglasses, partition, identity): every group has >= 3 identities."""
    rows = []
    for identity in range(num_identities):
        blond, male = (identity % 4) // 2, identity % 2  # identity 3, 7, ... are blond men
        for k in range(per_identity):
            index = identity * per_identity + k + 1
            partition = [0, 0, 1, 2][index % 4]
            rows.append((f"{index:06d}.jpg", blond, male, (index % 3 == 0), partition, 1000 + identity))
    return rows


@pytest.fixture
def celeba_dir(tmp_path):
    root = tmp_path / "celeba"
    rows = celeba_rows()
    for file, *_rest in rows:
        write_image(str(root / "img_align_celeba" / file), int(file[:6]))
    sign = lambda v: 1 if v else -1  # noqa: E731
    with open(root / "list_attr_celeba.txt", "w") as handle:
        # Official formatting: a trailing space after the names, values padded to width 2.
        handle.write(f"{len(rows)}\n" + " ".join(ATTRIBUTES) + " \n")
        for file, blond, male, glasses, _, _ in rows:
            values = [sign(False), sign(blond), sign(glasses), sign(male)]
            handle.write(file + " " + " ".join(f"{v:2d}" for v in values) + "\n")
    with open(root / "list_eval_partition.txt", "w") as handle:
        handle.writelines(f"{file} {partition}\n" for file, *_x, partition, _i in rows)
    with open(root / "identity_CelebA.txt", "w") as handle:
        handle.writelines(f"{file} {identity}\n" for file, *_x, identity in rows)
    return root


def test_celeba_official_partition(celeba_dir):
    dataset = load_celeba(CelebAConfig(str(celeba_dir)))
    assert_contract(dataset, ["not_blond", "blond"], ["female", "male"])
    assert group_names(dataset["test"].features) == ["not_blond/female", "not_blond/male", "blond/female", "blond/male"]
    rows = celeba_rows()
    for index, split in enumerate(SPLITS):
        expected = {f"img_align_celeba/{f}": (b, m) for f, b, m, _g, p, _i in rows if p == index}
        got = rows_by_id(dataset[split])
        assert {k: (r["label"], r["spurious"]) for k, r in got.items()} == expected
    again = load_benchmark("celeba", str(celeba_dir))
    assert all(again[split]._fingerprint == dataset[split]._fingerprint for split in SPLITS)
    sample = dataset["train"][0]
    assert sample["image"].getpixel((0, 0))[0] == pytest.approx(int(sample["example_id"][-10:-4]), abs=3)


def test_celeba_other_attributes_get_readable_names(celeba_dir):
    dataset = load_benchmark("celeba", str(celeba_dir), target_attribute="Eyeglasses", spurious_attribute="Blond_Hair")
    assert_contract(dataset, ["not_eyeglasses", "eyeglasses"], ["not_blond", "blond"])
    glasses = {f"img_align_celeba/{f}": int(g) for f, _b, _m, g, _p, _i in celeba_rows()}
    for split in SPLITS:
        for example_id, row in rows_by_id(dataset[split]).items():
            assert row["label"] == glasses[example_id]


def test_celeba_identity_resplit(celeba_dir):
    config = dict(split_by_identity=True, identity_train_fraction=0.5, identity_validation_fraction=0.25,
                  identity_test_fraction=0.25, seed=3)
    dataset = load_benchmark("celeba", str(celeba_dir), **config)
    assert_contract(dataset, ["not_blond", "blond"], ["female", "male"])
    identity_of = {f"img_align_celeba/{f}": i for f, *_x, i in celeba_rows()}
    ids = {split: set(dataset[split]["example_id"]) for split in SPLITS}
    # Every image in exactly one split, every identity in exactly one split.
    assert sorted(sum((list(v) for v in ids.values()), [])) == sorted(identity_of)
    people = {split: {identity_of[e] for e in ids[split]} for split in SPLITS}
    assert not people["train"] & people["validation"] and not people["train"] & people["test"]
    assert not people["validation"] & people["test"]
    # Identity fractions are met up to one identity per stratum (4 groups here).
    for split, fraction in zip(SPLITS, (0.5, 0.25, 0.25)):
        assert abs(len(people[split]) - fraction * 24) <= 4
    # Stratified by group: each group (6 identities each) reaches every split.
    assert all(count > 0 for counts in group_counts(dataset).values() for count in counts.values())
    again = load_benchmark("celeba", str(celeba_dir), **config)
    assert all(list(again[split]["example_id"]) == list(dataset[split]["example_id"]) for split in SPLITS)
    other = load_benchmark("celeba", str(celeba_dir), **{**config, "seed": 4})
    assert any(set(other[split]["example_id"]) != ids[split] for split in SPLITS)


def test_identity_split_puts_rare_groups_everywhere():
    # 3 identities of the rare group 3 among 40 common ones: a plain identity shuffle
    # would often leave it out of a split; the stratified split never does.
    identities = np.repeat(np.arange(43), 2)
    groups = np.where(identities >= 40, 3, identities % 3)
    for seed in range(5):
        split = identity_split(identities, groups, (0.6, 0.2, 0.2), seed)
        assert sorted(set(split[groups == 3])) == [0, 1, 2]
        for identity in range(43):
            assert len(set(split[identities == identity])) == 1


def test_celeba_errors_name_the_problem(celeba_dir):
    with pytest.raises(DatasetFormatError, match=r"'Bald'.*Blond_Hair"):
        load_celeba(CelebAConfig(str(celeba_dir), target_attribute="Bald"))

    os.remove(celeba_dir / "img_align_celeba" / "000005.jpg")
    with pytest.raises(DatasetFormatError, match=r"000005\.jpg"):
        load_celeba(CelebAConfig(str(celeba_dir)))

    lines = (celeba_dir / "list_eval_partition.txt").read_text().splitlines()
    (celeba_dir / "list_eval_partition.txt").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"list_eval_partition\.txt.*000001\.jpg"):
        load_celeba(CelebAConfig(str(celeba_dir)))

    os.remove(celeba_dir / "identity_CelebA.txt")
    with pytest.raises(DatasetFormatError, match=r"identity_CelebA\.txt"):
        load_celeba(CelebAConfig(str(celeba_dir), split_by_identity=True))

    lines = (celeba_dir / "list_attr_celeba.txt").read_text().splitlines()
    (celeba_dir / "list_attr_celeba.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetFormatError, match="announces 72 images but has 71"):
        load_celeba(CelebAConfig(str(celeba_dir)))


def test_celeba_config_validation():
    with pytest.raises(ValueError, match="sum to 1"):
        CelebAConfig("x", identity_train_fraction=0.7)
    with pytest.raises(ValueError, match="both 'Male'"):
        CelebAConfig("x", target_attribute="Male")


# ---------------------------------------------------------------- MetaShift

METASHIFT_FOLDERS = {  # folder -> number of images
    "train/cat/cat(sofa)": 3,
    "train/cat/cat(bed)": 2,
    "train/dog/dog(bench)": 2,
    "train/dog/dog(bike)": 4,
    "train/dog/dog(boat)": 2,  # another MetaShift experiment: must be ignored
    "test/cat/cat(shelf)": 10,
    "test/dog/dog(shelf)": 20,
}


@pytest.fixture
def metashift_dir(tmp_path):
    root = tmp_path / "MetaDatasetCatDog"
    for folder, count in METASHIFT_FOLDERS.items():
        for k in range(count):
            # Release files are named by their Visual Genome id: one name is one image.
            animal, context = folder.split("/")[1], folder.split("(")[1][:-1]
            write_image(str(root / folder / f"{animal}_{context}_{k:03d}.jpg"), k)
        (root / folder / "notes.txt").write_text("not an image")
    return root


def test_metashift_disc_layout(metashift_dir):
    dataset = load_metashift(MetaShiftConfig(str(metashift_dir), validation_fraction=0.2))
    contexts = ["bed", "bench", "bike", "shelf", "sofa"]
    assert_contract(dataset, ["cat", "dog"], contexts)
    counts = group_counts(dataset)
    assert counts["train"] == {
        **{name: 0 for name in group_names(dataset["train"].features)},
        "cat/sofa": 3, "cat/bed": 2, "dog/bench": 2, "dog/bike": 4,
    }
    # 20 % of each shelf folder is validation, the rest test.
    assert {k: v for k, v in counts["validation"].items() if v} == {"cat/shelf": 2, "dog/shelf": 4}
    assert {k: v for k, v in counts["test"].items() if v} == {"cat/shelf": 8, "dog/shelf": 16}
    assert dataset["train"].features["group"] == Value("int32")
    assert rows_by_id(dataset["train"])["train/dog/dog(bike)/dog_bike_001.jpg"]["group"] == 1 * 5 + contexts.index("bike")
    validation, test = set(dataset["validation"]["example_id"]), set(dataset["test"]["example_id"])
    shelf = {f"test/{a}/{a}(shelf)/{a}_shelf_{k:03d}.jpg" for a, n in (("cat", 10), ("dog", 20)) for k in range(n)}
    assert not validation & test and validation | test == shelf
    assert not any("boat" in e for e in dataset["train"]["example_id"])


def test_metashift_carve_is_seeded(metashift_dir):
    first = load_benchmark("metashift", str(metashift_dir), seed=1)
    again = load_benchmark("metashift", str(metashift_dir), seed=1)
    other = load_benchmark("metashift", str(metashift_dir), seed=2)
    assert list(first["validation"]["example_id"]) == list(again["validation"]["example_id"])
    assert set(first["validation"]["example_id"]) != set(other["validation"]["example_id"])
    # Default fraction 0.15: round(1.5) = 2 cats, round(3.0) = 3 dogs.
    assert len(first["validation"]) == 2 + 3


def test_metashift_uses_a_val_folder_when_present(metashift_dir):
    for animal in ("cat", "dog"):
        write_image(str(metashift_dir / f"val/{animal}/{animal}(shelf)/{animal}_v.jpg"), 1)
    dataset = load_metashift(MetaShiftConfig(str(metashift_dir)))
    assert sorted(dataset["validation"]["example_id"]) == ["val/cat/cat(shelf)/cat_v.jpg", "val/dog/dog(shelf)/dog_v.jpg"]
    assert len(dataset["test"]) == 30


def test_metashift_other_subsets_and_errors(metashift_dir):
    dataset = load_metashift(MetaShiftConfig(str(metashift_dir), train_contexts="cat:sofa;dog:boat"))
    assert dataset["train"].features["spurious"].names == ["boat", "shelf", "sofa"]
    assert len(dataset["train"]) == 5
    with pytest.raises(DatasetFormatError, match=r"dog\(car\)"):
        load_metashift(MetaShiftConfig(str(metashift_dir), train_contexts="cat:sofa;dog:car"))
    with pytest.raises(ValueError, match="classes"):
        MetaShiftConfig(str(metashift_dir), test_contexts="cat:shelf")
    with pytest.raises(ValueError, match="context spec"):
        MetaShiftConfig(str(metashift_dir), train_contexts="cat sofa")


# ---------------------------------------------------------------- Hub / local folders


def hub_split(n, offset):
    return {
        "picture": [Image.new("RGB", (5, 5), (i, 0, 0)) for i in range(offset, offset + n)],
        "species": ["dog" if i % 2 else "cat" for i in range(n)],
        "place": [i % 3 % 2 for i in range(n)],
        "uid": [f"u{offset + i}" for i in range(n)],
        "extra": list(range(n)),
    }


HUB_FEATURES = Features({
    "picture": ImageFeature(),
    "species": Value("string"),
    "place": ClassLabel(names=["indoor", "outdoor"]),
    "uid": Value("string"),
    "extra": Value("int64"),
})


def test_hub_from_saved_datasetdict(tmp_path):
    source = DatasetDict({
        "train": Dataset.from_dict(hub_split(8, 0), features=HUB_FEATURES),
        "val": Dataset.from_dict(hub_split(4, 100), features=HUB_FEATURES),
        "test": Dataset.from_dict(hub_split(4, 200), features=HUB_FEATURES),
    })
    source.save_to_disk(tmp_path / "saved")
    dataset = load_benchmark(
        "hub", str(tmp_path / "saved"), label_column="species", spurious_column="place",
        image_column="picture", example_id_column="uid",
    )
    assert_contract(dataset, ["cat", "dog"], ["indoor", "outdoor"])
    assert list(dataset["validation"]["example_id"]) == [f"u{100 + i}" for i in range(4)]
    row = dataset["validation"][1]
    assert (row["label"], row["spurious"], row["group"]) == (1, 1, 3)
    assert row["image"].getpixel((0, 0)) == (101, 0, 0)
    assert "extra" not in dataset["train"].column_names


def test_hub_carves_missing_splits(tmp_path):
    Dataset.from_dict(hub_split(40, 0), features=HUB_FEATURES).save_to_disk(tmp_path / "single")
    config = HubConfig(str(tmp_path / "single"), label_column="species", spurious_column="place",
                       image_column="picture", validation_fraction=0.25, test_fraction=0.25, seed=5)
    dataset = load_hub(config)
    assert_contract(dataset, ["cat", "dog"], ["indoor", "outdoor"])
    ids = [set(dataset[split]["example_id"]) for split in SPLITS]
    assert set().union(*ids) == {f"train-{i}" for i in range(40)} and sum(map(len, ids)) == 40
    # A quarter of every group of the source (up to rounding) in validation and in test.
    source = hub_split(40, 0)
    labels = [["cat", "dog"].index(v) for v in source["species"]]
    source_groups = np.bincount(np.array(labels) * 2 + np.array(source["place"]), minlength=4)
    for split in ("validation", "test"):
        counts = np.bincount(dataset[split]["group"], minlength=4)
        assert np.all(np.abs(counts - source_groups / 4) <= 1), (split, counts, source_groups)
    assert list(load_hub(config)["test"]["example_id"]) == list(dataset["test"]["example_id"])
    with pytest.raises(DatasetFormatError, match="validation_fraction"):
        load_hub(HubConfig(str(tmp_path / "single"), label_column="species", spurious_column="place",
                           image_column="picture", test_fraction=0.25))


def test_hub_from_imagefolder_with_metadata(tmp_path):
    root = tmp_path / "folder"
    for split, n in (("train", 6), ("validation", 2), ("test", 3)):
        rows = []
        for i in range(n):
            name = f"img_{i}.png"
            write_image(str(root / split / name), i)
            rows.append({"file_name": name, "bird": ["water", "land"][i % 2], "background": ["lake", "forest"][i // 2 % 2]})
        pd.DataFrame(rows).to_csv(root / split / "metadata.csv", index=False)
    dataset = load_benchmark("hub", str(root), label_column="bird", spurious_column="background")
    assert_contract(dataset, ["land", "water"], ["forest", "lake"])
    assert [len(dataset[s]) for s in SPLITS] == [6, 2, 3]
    assert list(dataset["train"]["example_id"])[:2] == ["train-0", "train-1"]
    assert list(dataset["train"]["label"])[:2] == [1, 0]


def test_hub_from_parquet_and_missing_columns(tmp_path):
    root = tmp_path / "parquet"
    root.mkdir()
    for split, offset in (("train", 0), ("validation", 50), ("test", 60)):
        Dataset.from_dict(hub_split(6, offset), features=HUB_FEATURES).to_parquet(str(root / f"{split}.parquet"))
    dataset = load_benchmark("hub", str(root), label_column="place", spurious_column="species", image_column="picture")
    assert_contract(dataset, ["indoor", "outdoor"], ["cat", "dog"])
    assert dataset["test"][2]["image"].getpixel((0, 0)) == (62, 0, 0)
    with pytest.raises(DatasetFormatError, match=r"'habitat'.*'picture'"):
        load_benchmark("hub", str(root), label_column="habitat", spurious_column="species", image_column="picture")
    with pytest.raises(DatasetFormatError, match=r"'image'.*'extra'"):
        load_benchmark("hub", str(root), label_column="place", spurious_column="species")


# ---------------------------------------------------------------- registry


def test_registry_names_and_options(tmp_path):
    assert BENCHMARKS == ("toy", "celeba", "waterbirds", "metashift", "hub")
    toy = load_benchmark("toy", "ignored", num_train=8, num_validation=4, num_test=4, image_size=16)
    assert [len(toy[s]) for s in SPLITS] == [8, 4, 4]
    with pytest.raises(ValueError, match=r"\['colour'\].*target_attribute"):
        load_benchmark("celeba", str(tmp_path), colour="red")
    with pytest.raises(ValueError, match=r"unknown benchmark 'mnist'.*waterbirds"):
        load_benchmark("mnist", str(tmp_path))
    with pytest.raises(ValueError, match="needs data_dir"):
        load_benchmark("waterbirds")


def test_configs_are_command_lines():
    from transformers import HfArgumentParser

    (celeba,) = HfArgumentParser(CelebAConfig).parse_args_into_dataclasses(
        ["--data_dir", "d", "--split_by_identity", "--seed", "3"]
    )
    assert (celeba.split_by_identity, celeba.seed, celeba.target_attribute) == (True, 3, "Blond_Hair")
    (hub,) = HfArgumentParser(HubConfig).parse_args_into_dataclasses(
        ["--path", "user/birds", "--label_column", "y", "--spurious_column", "place", "--revision", "v1"]
    )
    assert (hub.revision, hub.example_id_column) == ("v1", None)
    (metashift,) = HfArgumentParser(MetaShiftConfig).parse_args_into_dataclasses(["--data_dir", "d"])
    assert metashift.train_contexts == "cat:sofa,bed;dog:bench,bike"
    with pytest.raises(SystemExit):
        HfArgumentParser(WaterbirdsConfig).parse_args_into_dataclasses([])  # data_dir is required


# ---------------------------------------------------------------- malformed and duplicate rows


def _attribute_lines(celeba_dir):
    return (celeba_dir / "list_attr_celeba.txt").read_text().splitlines()


def _write_attributes(celeba_dir, lines):
    (celeba_dir / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("edit, message", [
    # The names line is missing: line 2 is the first image's row.
    (lambda lines: lines[:1] + lines[2:], r"line 2 should hold the attribute names.*000001\.jpg.*names line is missing"),
    (lambda lines: [lines[0], ""] + lines[2:], r"line 2 should hold the attribute names.*empty"),
    # A name missing from the header (rows have 4 values, line 2 names 3).
    (lambda lines: [lines[0], "Blond_Hair Eyeglasses Male"] + lines[2:],
     r"line 2 names 3 attributes but every row has 4 values: 1 name\(s\) missing from line 2"),
    # An extra name in the header.
    (lambda lines: [lines[0], lines[1] + " Wavy_Hair"] + lines[2:],
     r"line 2 names 5 attributes but every row has 4 values: line 2 has 1 name\(s\) too many"),
    (lambda lines: [lines[0], lines[1] + " Male"] + lines[2:], r"line 2 names attribute\(s\) \['Male'\] more than once"),
    # An extra value on some rows (pandas used to shift them into a MultiIndex).
    (lambda lines: lines[:4] + [lines[4] + "  1", lines[5] + " -1 1"] + lines[6:],
     r"2 line\(s\) do not have 5 fields.*line 5 has 6, line 6 has 7"),
    (lambda lines: lines[:6] + [lines[6].replace("-1", " 0", 2)] + lines[7:], r"column '.*' should be one of \[-1, 1\].*line 7: 0"),
])
def test_malformed_celeba_attribute_files_name_the_line_and_the_problem(celeba_dir, edit, message):
    _write_attributes(celeba_dir, edit(_attribute_lines(celeba_dir)))
    with pytest.raises(DatasetFormatError, match=message) as error:
        load_celeba(CelebAConfig(str(celeba_dir)))
    assert "list_attr_celeba.txt" in str(error.value)


def test_celeba_duplicate_rows_exact_dropped_with_a_warning_conflicting_refused(celeba_dir):
    lines = _attribute_lines(celeba_dir)
    # Line 5 (000003.jpg) repeated at the end, the count line not updated: dropped, named.
    _write_attributes(celeba_dir, lines + [lines[4]])
    with pytest.warns(UserWarning, match=r"dropped 1 row\(s\) that repeat an earlier row of the same file exactly.*'000003\.jpg' \(line 75\)"):
        dataset = load_celeba(CelebAConfig(str(celeba_dir)))
    ids = sum((list(dataset[s]["example_id"]) for s in SPLITS), [])
    assert len(ids) == len(set(ids)) == 72
    # The same file with another Blond_Hair value: refused, naming the file, both lines and the column.
    conflicting = lines[4].split()
    conflicting[2] = "1" if conflicting[2] == "-1" else "-1"
    _write_attributes(celeba_dir, lines + [" ".join(conflicting)])
    with pytest.raises(DatasetFormatError, match=r"1 file\(s\) listed more than once.*'000003\.jpg' \(line 5: Blond_Hair=.*line 75: Blond_Hair="):
        load_celeba(CelebAConfig(str(celeba_dir)))
    _write_attributes(celeba_dir, lines)

    # Partition rows: an exact repeat is dropped; one image in two partitions is refused.
    partition = (celeba_dir / "list_eval_partition.txt").read_text()
    (celeba_dir / "list_eval_partition.txt").write_text(partition + "000002.jpg 1\n")
    with pytest.warns(UserWarning, match=r"list_eval_partition\.txt: dropped 1 row.*'000002\.jpg' \(line 73\)"):
        assert sum(len(d) for d in load_celeba(CelebAConfig(str(celeba_dir))).values()) == 72
    (celeba_dir / "list_eval_partition.txt").write_text(partition + "000002.jpg 2\n")
    with pytest.raises(DatasetFormatError, match=r"list_eval_partition\.txt.*'000002\.jpg' \(line 2: partition=1; line 73: partition=2\)"):
        load_celeba(CelebAConfig(str(celeba_dir)))
    (celeba_dir / "list_eval_partition.txt").write_text(partition.replace("000004.jpg 0", "000004.jpg zero"))
    with pytest.raises(DatasetFormatError, match=r"partition should be an integer.*line 4: 'zero'"):
        load_celeba(CelebAConfig(str(celeba_dir)))
    (celeba_dir / "list_eval_partition.txt").write_text(partition)
    identities = (celeba_dir / "identity_CelebA.txt").read_text()
    (celeba_dir / "identity_CelebA.txt").write_text(identities + "000002.jpg 7\n")
    with pytest.raises(DatasetFormatError, match=r"identity_CelebA\.txt.*'000002\.jpg'.*identity=1000.*identity=7"):
        load_celeba(CelebAConfig(str(celeba_dir), split_by_identity=True))


def test_celeba_class_balance_is_seeded_and_leaves_validation_and_test_alone(celeba_dir):
    options = dict(target_attribute="Eyeglasses", spurious_attribute="Male")  # a third of the faces wear glasses
    plain = load_celeba(CelebAConfig(str(celeba_dir), **options))
    balanced = load_celeba(CelebAConfig(str(celeba_dir), class_balance=True, seed=1, **options))
    train_labels = np.bincount(plain["train"]["label"])
    assert train_labels[0] != train_labels[1]
    assert np.bincount(balanced["train"]["label"]).tolist() == [train_labels.min()] * 2
    assert set(balanced["train"]["example_id"]) < set(plain["train"]["example_id"])
    for split in ("validation", "test"):
        assert balanced[split]["example_id"] == plain[split]["example_id"]
    again = load_celeba(CelebAConfig(str(celeba_dir), class_balance=True, seed=1, **options))
    other = load_celeba(CelebAConfig(str(celeba_dir), class_balance=True, seed=2, **options))
    assert again["train"]["example_id"] == balanced["train"]["example_id"]
    assert other["train"]["example_id"] != balanced["train"]["example_id"]
    # After an identity re-split too, and as a command-line option.
    resplit = load_benchmark("celeba", str(celeba_dir), split_by_identity=True, class_balance=True, **options)
    counts = np.bincount(resplit["train"]["label"])
    assert counts[0] == counts[1] > 0


def test_celeba_keeps_other_attributes_as_columns(celeba_dir):
    dataset = load_celeba(CelebAConfig(str(celeba_dir), keep_columns=["Eyeglasses"]))
    assert dataset["train"].features["Eyeglasses"] == ClassLabel(names=["not_eyeglasses", "eyeglasses"])
    glasses = {f"img_align_celeba/{f}": int(g) for f, _b, _m, g, _p, _i in celeba_rows()}
    for split in SPLITS:
        assert dataset[split]["Eyeglasses"] == [glasses[e] for e in dataset[split]["example_id"]]
    with pytest.raises(DatasetFormatError, match=r"'Wavy_Hair'.*Blond_Hair"):
        load_celeba(CelebAConfig(str(celeba_dir), keep_columns=["Wavy_Hair"]))


def test_waterbirds_duplicate_rows(waterbirds_dir):
    metadata = pd.read_csv(waterbirds_dir / "metadata.csv")
    pd.concat([metadata, metadata.iloc[[3]]]).to_csv(waterbirds_dir / "metadata.csv", index=False)
    with pytest.warns(UserWarning, match=r"dropped 1 row.*'002\.Sparrow/s_0\.jpg' \(line 13\)"):
        dataset = load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))
    assert sum(len(d) for d in dataset.values()) == len(WATERBIRDS_ROWS)
    # Listed twice with another split (and label): refused, naming the file, lines and values.
    leaked = metadata.iloc[[3]].assign(split=2, y=1)
    pd.concat([metadata, leaked]).to_csv(waterbirds_dir / "metadata.csv", index=False)
    with pytest.raises(DatasetFormatError, match=r"'002\.Sparrow/s_0\.jpg' \(line 5: y=0, split=0; line 13: y=1, split=2\)"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir)))


def test_waterbirds_keeps_columns_and_reads_cub_segmentations(waterbirds_dir, tmp_path):
    segmentations = tmp_path / "segmentations"
    for i, (name, *_rest) in enumerate(WATERBIRDS_ROWS):
        mask = np.zeros((8, 6), dtype=np.uint8)
        mask[i % 8] = 255
        os.makedirs(segmentations / os.path.dirname(name), exist_ok=True)
        Image.fromarray(mask, mode="L").save(segmentations / name.replace(".jpg", ".png"))
    dataset = load_waterbirds(WaterbirdsConfig(str(waterbirds_dir), segmentation_dir=str(segmentations),
                                               keep_columns=["place_filename", "img_id"]))
    assert isinstance(dataset["train"].features["mask"], ImageFeature)
    row = dataset["validation"][0]  # 001.Albatross/a_3.jpg, row 6 of the metadata
    assert row["mask"].size == row["image"].size and np.asarray(row["mask"])[6].min() == 255
    assert (row["place_filename"], row["img_id"]) == ("/l/lake/00000001.jpg", 7)
    assert dataset["test"].features["img_id"] == Value("int64")
    os.remove(segmentations / "002.Sparrow" / "s_5.png")
    with pytest.raises(DatasetFormatError, match=r"1 image\(s\)' masks.*s_5\.jpg"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir), segmentation_dir=str(segmentations)))
    with pytest.raises(DatasetFormatError, match=r"'photographer'.*img_filename"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir), keep_columns=["photographer"]))
    with pytest.raises(DatasetFormatError, match="would replace the loader's own"):
        load_waterbirds(WaterbirdsConfig(str(waterbirds_dir), keep_columns=["image"]))


def test_metashift_one_file_in_two_classes_or_splits_is_refused(metashift_dir):
    shutil.copy(metashift_dir / "train/cat/cat(sofa)/cat_sofa_000.jpg", metashift_dir / "test/dog/dog(shelf)")
    with pytest.raises(DatasetFormatError, match=r"'cat_sofa_000\.jpg' \(train/cat/cat\(sofa\)/cat_sofa_000\.jpg: "
                                                 r"split='train', class='cat'; test/dog/dog\(shelf\)/cat_sofa_000\.jpg:.*Visual Genome"):
        load_metashift(MetaShiftConfig(str(metashift_dir)))
    os.remove(metashift_dir / "test/dog/dog(shelf)/cat_sofa_000.jpg")
    shutil.copy(metashift_dir / "test/cat/cat(shelf)/cat_shelf_000.jpg", metashift_dir / "train/cat/cat(bed)")
    with pytest.raises(DatasetFormatError, match=r"'cat_shelf_000\.jpg'.*split="):
        load_metashift(MetaShiftConfig(str(metashift_dir)))


def test_metashift_one_image_in_two_contexts_of_its_class_is_kept_in_both(metashift_dir):
    # MetaShift's subsets overlap: an image of a cat on a sofa next to a bed is in both folders.
    shutil.copy(metashift_dir / "train/cat/cat(sofa)/cat_sofa_000.jpg", metashift_dir / "train/cat/cat(bed)")
    with pytest.warns(UserWarning, match=r"1 image\(s\) are in two or more context folders.*cat_sofa_000\.jpg"):
        dataset = load_metashift(MetaShiftConfig(str(metashift_dir)))
    assert {"train/cat/cat(sofa)/cat_sofa_000.jpg", "train/cat/cat(bed)/cat_sofa_000.jpg"} <= set(dataset["train"]["example_id"])
    assert group_counts(dataset)["train"]["cat/bed"] == 3


def test_hub_refuses_empty_labels_naming_split_column_and_ids(tmp_path):
    rows = hub_split(6, 0)
    rows["species"][2] = None
    DatasetDict({s: Dataset.from_dict(rows if s == "test" else hub_split(6, 10), features=HUB_FEATURES)
                 for s in SPLITS}).save_to_disk(tmp_path / "none")
    with pytest.raises(DatasetFormatError, match=r"split 'test': column 'species' is empty \(None or NaN\) in 1 row.*\['u2'\]"):
        load_benchmark("hub", str(tmp_path / "none"), label_column="species", spurious_column="place",
                       image_column="picture", example_id_column="uid")
    # A float column with NaN (what pandas makes of an integer column with a gap), no id column.
    root = tmp_path / "nan"
    root.mkdir()
    for split in SPLITS:
        frame = pd.DataFrame({"picture": [str(tmp_path / f"{split}{i}.png") for i in range(4)],
                              "bird": [0.0, 1.0, np.nan if split == "train" else 0.0, 1.0], "place": [0, 1, 0, 1]})
        for path in frame["picture"]:
            write_image(path, 3)
        frame.to_parquet(root / f"{split}.parquet")
    with pytest.raises(DatasetFormatError, match=r"split 'train': column 'bird' is empty.*\['train-2'\]"):
        load_benchmark("hub", str(root), label_column="bird", spurious_column="place", image_column="picture")


def test_hub_duplicate_example_ids_and_files(tmp_path):
    train = hub_split(6, 0)
    repeated = {k: v + [v[1]] for k, v in train.items()}  # u1 listed twice, identical
    DatasetDict({"train": Dataset.from_dict(repeated, features=HUB_FEATURES),
                 "validation": Dataset.from_dict(hub_split(3, 10), features=HUB_FEATURES),
                 "test": Dataset.from_dict(hub_split(3, 20), features=HUB_FEATURES)}).save_to_disk(tmp_path / "exact")
    options = dict(label_column="species", spurious_column="place", image_column="picture", example_id_column="uid")
    with pytest.warns(UserWarning, match=r"dropped 1 row.*'u1' \(split 'train' row 6\)"):
        dataset = load_benchmark("hub", str(tmp_path / "exact"), **options)
    assert dataset["train"]["example_id"] == [f"u{i}" for i in range(6)]
    # u1 again in test: one image in two splits is refused, naming both rows.
    test = hub_split(3, 20)
    leaked = {k: v + [train[k][1]] for k, v in test.items()}
    DatasetDict({"train": Dataset.from_dict(train, features=HUB_FEATURES),
                 "validation": Dataset.from_dict(hub_split(3, 10), features=HUB_FEATURES),
                 "test": Dataset.from_dict(leaked, features=HUB_FEATURES)}).save_to_disk(tmp_path / "leak")
    with pytest.raises(DatasetFormatError, match=r"'u1' \(split 'train' row 1: split='train'; split 'test' row 3: split='test'\)"):
        load_benchmark("hub", str(tmp_path / "leak"), **options)
    # Without ids: an image folder whose metadata.csv lists one file twice.
    root = tmp_path / "folder"
    for split, n in (("train", 4), ("validation", 2), ("test", 2)):
        rows = [{"file_name": f"{split}_{i}.png", "bird": ["water", "land"][i % 2], "place": i % 2} for i in range(n)]
        for row in rows:
            write_image(str(root / split / row["file_name"]), 1)
        pd.DataFrame(rows + rows[:1]).to_csv(root / split / "metadata.csv", index=False)
    with pytest.warns(UserWarning, match=r"dropped 3 row.*same image file exactly.*train_0\.png"):
        dataset = load_benchmark("hub", str(root), label_column="bird", spurious_column="place")
    assert [len(dataset[s]) for s in SPLITS] == [4, 2, 2]


def test_hub_keeps_columns_and_a_mask_column_of_paths(tmp_path):
    root = tmp_path / "parquet"
    root.mkdir()
    for split, offset in (("train", 0), ("validation", 50), ("test", 60)):
        rows = hub_split(4, offset)
        rows["outline"] = [str(tmp_path / "masks" / f"{offset + i}.png") for i in range(4)]
        for i, path in enumerate(rows["outline"]):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.new("L", (5, 5), 255 * (i % 2)).save(path)
        features = Features({**HUB_FEATURES, "outline": Value("string")})
        Dataset.from_dict(rows, features=features).to_parquet(str(root / f"{split}.parquet"))
    options = dict(label_column="species", spurious_column="place", image_column="picture")
    dataset = load_benchmark("hub", str(root), mask_column="outline", keep_columns=["extra", "uid"], **options)
    assert dataset["test"].column_names == ["image", "label", "spurious", "group", "example_id", "mask", "extra", "uid"]
    assert isinstance(dataset["test"].features["mask"], ImageFeature)
    assert np.asarray(dataset["test"][1]["mask"]).min() == 255 and dataset["test"][1]["extra"] == 1
    with pytest.raises(DatasetFormatError, match=r"keep_columns \['label'\] would replace"):
        load_benchmark("hub", str(root), keep_columns=["label"], **options)
    with pytest.raises(DatasetFormatError, match=r"'colour'"):
        load_benchmark("hub", str(root), keep_columns=["colour"], **options)
    with pytest.raises(ValueError, match="mask_column=mask"):
        HubConfig(str(root), keep_columns=["mask"], **options)
