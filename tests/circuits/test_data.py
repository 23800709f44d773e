"""The DEBD datasets shipped with `circuits` (circuits/data.py with no `directory`)."""

import gzip

import numpy as np
import pytest

import circuits
from circuits.data import _SHIPPED_DIRECTORY

SHIPPED = ["mushrooms", "nltcs"]
# Published split sizes (rows, variables): nltcs per Lowd & Davis (2010) and the shared
# data README; mushrooms per Larochelle & Murray (2011).
SIZES = {"nltcs": ((16181, 2157, 3236), 16), "mushrooms": ((2000, 500, 5624), 112)}


@pytest.fixture(scope="module")
def shipped():
    return {name: circuits.load_debd(name) for name in SHIPPED}


def test_list_debd_without_a_directory_lists_the_shipped_datasets():
    assert circuits.list_debd() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_datasets_have_the_published_shapes(shipped, name):
    rows, variables = SIZES[name]
    data = shipped[name]
    assert list(data) == ["train", "valid", "test"]
    assert [data[s].shape for s in data] == [(n, variables) for n in rows]
    for split in data.values():
        assert split.dtype == np.int8
        assert set(np.unique(split)) == {0, 1}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_datasets_match_an_independent_parse(shipped, name):
    for split, array in shipped[name].items():
        with gzip.open(_SHIPPED_DIRECTORY / f"{name}.{split}.data.gz", "rt") as f:
            expected = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
        np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_files_are_the_shared_copies_unchanged(shipped, shared_data, name):
    for split in shipped[name]:
        file = f"{name}.{split}.data.gz"
        assert (_SHIPPED_DIRECTORY / file).read_bytes() == (shared_data / "debd" / file).read_bytes()
    from_shared = circuits.load_debd(name, shared_data / "debd")
    for split, array in shipped[name].items():
        np.testing.assert_array_equal(array, from_shared[split])


def test_a_dataset_that_is_not_shipped_names_the_shipped_ones_and_directory():
    with pytest.raises(ValueError, match=r"`name` 'plants' is not shipped with the package "
                                         r"\(shipped: mushrooms, nltcs\); .*pass `directory=`.*"
                                         r"UCLA-StarAI/Density-Estimation-Datasets"):
        circuits.load_debd("plants")


def test_bad_name_or_directory_types():
    with pytest.raises(TypeError, match="`name` must be a dataset name"):
        circuits.load_debd(3)
    with pytest.raises(ValueError, match="`name` must be a dataset name"):
        circuits.load_debd("")
    with pytest.raises(TypeError, match="`directory` must be a path"):
        circuits.load_debd("nltcs", 3)
    with pytest.raises(TypeError, match="`directory` must be a path"):
        circuits.list_debd(3)


def test_an_explicit_directory_is_not_limited_to_the_shipped_names(tmp_path):
    (tmp_path / "plants.train.data").write_text("0,1\n1,1\n")
    (tmp_path / "plants.valid.data").write_text("1,0\n")
    (tmp_path / "plants.test.data").write_text("0,0\n")
    data = circuits.load_debd("plants", tmp_path)
    np.testing.assert_array_equal(data["train"], [[0, 1], [1, 1]])
    assert circuits.list_debd(tmp_path) == ["plants"]
