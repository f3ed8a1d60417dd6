import os
import re
import stat

import h5py
import numpy as np
import pytest

from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.h5io import FORMAT_VERSION, DataFileError, read_split, split_filename, write_split

PARAMS = dict(
    frequencies=[1.0, 3.0, 5.0, 7.0],
    fs=100.0,
    duration=0.5,
    amplitude_range=[0.8, 1.2],
    phase_scale=0.01,
    noise_sigma=0.1,
    n_mixtures=2,
    seed=1,
)


def _written(tmp_path, name="train.h5"):
    data = generate_split(**PARAMS)
    return write_split(tmp_path / name, data, "train"), data


def _tamper(path, action):
    with h5py.File(path, "r+") as f:
        action(f)


def test_round_trip(tmp_path):
    path, data = _written(tmp_path, "sub/dir/train.h5")
    assert path == tmp_path / "sub/dir/train.h5"
    back = read_split(path, expected_params=PARAMS, expected_split="train")
    for name in ("t", "mixture", "target"):
        original, read = getattr(data, name), getattr(back, name)
        assert read.dtype == original.dtype
        np.testing.assert_array_equal(read, original)
    assert back.params == data.params
    with h5py.File(path, "r") as f:
        assert f.attrs["format_version"] == FORMAT_VERSION
        assert f.attrs["split"] == "train"
        assert f.attrs["amplitude_low"] == 0.8 and f.attrs["amplitude_high"] == 1.2
        assert f.attrs["frequencies"].dtype == np.float64
        assert f.attrs["seed"] == 1 and f.attrs["n_mixtures"] == 2


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    with pytest.raises(DataFileError, match=rf"Data file {re.escape(str(path))} does not exist\."):
        read_split(path)


def test_text_file_is_refused(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_text("mixture,target\n1,2\n")
    with pytest.raises(DataFileError, match=rf"Data file {re.escape(str(path))} is not an HDF5 file\."):
        read_split(path)


def test_truncated_file_is_refused(tmp_path):
    path, _ = _written(tmp_path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(DataFileError, match=rf"Data file {re.escape(str(path))} is not a readable HDF5 file"):
        read_split(path)


def test_missing_dataset(tmp_path):
    path, _ = _written(tmp_path)
    _tamper(path, lambda f: f.__delitem__("t"))
    with pytest.raises(DataFileError, match=r"train\.h5 is missing dataset\(s\) \['/t'\]\."):
        read_split(path)


def test_missing_attribute(tmp_path):
    path, _ = _written(tmp_path)
    _tamper(path, lambda f: f.attrs.__delitem__("noise_sigma"))
    with pytest.raises(DataFileError, match=r"train\.h5 is missing attribute\(s\) \['noise_sigma'\]\."):
        read_split(path)


def test_wrong_shape(tmp_path):
    path, data = _written(tmp_path)

    def shorten(f):
        del f["mixture"]
        f["mixture"] = data.mixture[:, :-1]

    _tamper(path, shorten)
    with pytest.raises(DataFileError, match=r"train\.h5: dataset /mixture has shape \(2, 49\), expected \(2, 50\)\."):
        read_split(path)


def test_wrong_dtype(tmp_path):
    path, data = _written(tmp_path)

    def widen(f):
        del f["target"]
        f["target"] = data.target.astype(np.float64)

    _tamper(path, widen)
    with pytest.raises(DataFileError, match=r"dataset /target has dtype float64, expected float32\."):
        read_split(path)


def test_nan_in_mixture(tmp_path):
    path, _ = _written(tmp_path)
    _tamper(path, lambda f: f["mixture"].__setitem__((1, 3), np.nan))
    with pytest.raises(DataFileError, match=r"train\.h5 has NaN or infinite values in /mixture\."):
        read_split(path)


def test_inf_in_target(tmp_path):
    path, _ = _written(tmp_path)
    _tamper(path, lambda f: f["target"].__setitem__((0, 0), np.inf))
    with pytest.raises(DataFileError, match=r"train\.h5 has NaN or infinite values in /target\."):
        read_split(path)


def test_bad_format_version(tmp_path):
    path, _ = _written(tmp_path)
    _tamper(path, lambda f: f.attrs.__setitem__("format_version", 2))
    with pytest.raises(DataFileError, match=r"train\.h5 has unsupported format_version 2; supported: 1\."):
        read_split(path)


def test_params_mismatch_names_every_key(tmp_path):
    path, _ = _written(tmp_path)
    expected = dict(PARAMS, fs=200.0, seed=3)
    with pytest.raises(
        DataFileError,
        match=r"train\.h5 was generated with other parameters: fs: file 100\.0 vs expected 200\.0; "
        r"seed: file 1 vs expected 3\.",
    ):
        read_split(path, expected_params=expected)


def test_params_compared_with_tight_tolerance(tmp_path):
    path, _ = _written(tmp_path)
    read_split(path, expected_params=dict(PARAMS, fs=100.0 * (1 + 1e-15), amplitude_range=(0.8, 1.2)))
    with pytest.raises(DataFileError, match=r"phase_scale: file 0\.01 vs expected 0\.0100001"):
        read_split(path, expected_params=dict(PARAMS, phase_scale=0.0100001))


def test_wrong_split_name(tmp_path):
    path, _ = _written(tmp_path)
    with pytest.raises(DataFileError, match=r"train\.h5 holds split 'train', expected 'test'\."):
        read_split(path, expected_split="test")


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    _written(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]


def test_failed_write_leaves_no_temporary_files(tmp_path):
    target_dir = tmp_path / "train.h5"
    target_dir.mkdir()  # os.replace cannot replace a directory by a file
    with pytest.raises(OSError):
        write_split(target_dir, generate_split(**PARAMS), "train")
    assert [p.name for p in tmp_path.iterdir()] == ["train.h5"]
    assert list(target_dir.iterdir()) == []


def test_write_refuses_inconsistent_data(tmp_path):
    data = generate_split(**PARAMS)
    bad = type(data)(t=data.t, mixture=data.mixture[:1], target=data.target, params=data.params)
    with pytest.raises(ValueError, match=r"dataset /mixture has shape \(1, 50\), expected \(2, 50\)"):
        write_split(tmp_path / "x.h5", bad, "train")
    with pytest.raises(ValueError, match=r"Argument split should match \[A-Za-z0-9_-\]\+, got '../x'\."):
        write_split(tmp_path / "x.h5", data, "../x")
    assert list(tmp_path.iterdir()) == []


def test_split_filename_is_keyed_by_params():
    name = split_filename("train", PARAMS)
    assert re.fullmatch(r"train-[0-9a-f]{10}\.h5", name)
    assert split_filename("train", dict(PARAMS)) == name
    # Same values written as ints or tuples give the same key.
    assert split_filename("train", dict(PARAMS, fs=100, amplitude_range=(0.8, 1.2))) == name
    assert split_filename("test", PARAMS) == "test-" + name[len("train-") :]
    for key, value in [("seed", 2), ("noise_sigma", 0.0), ("frequencies", [1.0, 3.0, 5.0]), ("n_mixtures", 3)]:
        assert split_filename("train", dict(PARAMS, **{key: value})) != name


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_file_follows_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        path, _ = _written(tmp_path)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as open() would; not mkstemp's 0600
