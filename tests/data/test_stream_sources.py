"""The series of a stream: (x, y) pairs checked by name, HDF5 datasets read chunk by chunk, forecast pairs."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from ignite_lstm.app.task.h5io import DataFileError
from ignite_lstm.data.sources import H5Series, as_series, forecast_pair, h5_series
from ignite_lstm.data.streams import StreamLoader


def _file(path, **datasets):
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f[name.replace("__", "/")] = value
    return path


def test_named_datasets_and_a_group_read_as_their_arrays(tmp_path):
    a, b = np.arange(12.0).reshape(6, 2), np.arange(6.0)
    path = _file(
        tmp_path / "s.h5",
        x=a,
        y=b,
        g__s1__x=a[:4],
        g__s1__y=b[:4, None],
        g__s0__x=a,
        g__s0__y=b,
        g__note=np.zeros(1),
        g__other__x=a,
    )  # a dataset and a member without y: not series
    (one,) = h5_series(path)
    assert len(one) == 6 and (one.features, one.outputs) == (2, 1) and one.dtypes == (torch.float64,) * 2
    x, y = one.read(2, 5)
    assert torch.equal(x, torch.from_numpy(a[2:5])) and torch.equal(y, torch.from_numpy(b[2:5, None]))
    grouped = h5_series(path, group="g")
    assert [(s.x, len(s)) for s in grouped] == [("/g/s0/x", 6), ("/g/s1/x", 4)]  # h5py's order: by name
    two = h5_series(path, x=["x", "g/s1/x"], y=["y", "g/s1/y"])
    assert [len(s) for s in two] == [6, 4]


def test_horizon_pairs_each_input_with_a_later_target(tmp_path):
    values = np.arange(10.0)[:, None]
    (s,) = h5_series(_file(tmp_path / "v.h5", v=values), x="v", y="v", horizon=2)
    assert len(s) == 8
    x, y = s.read(5, 8)
    assert x[:, 0].tolist() == [5, 6, 7] and y[:, 0].tolist() == [7, 8, 9]
    fx, fy = forecast_pair(values, horizon=2)
    assert torch.equal(fx, torch.from_numpy(values[:-2])) and torch.equal(fy, torch.from_numpy(values[2:]))
    x1, y1 = forecast_pair(torch.arange(5.0))  # 1-D: (T, 1)
    assert x1.shape == y1.shape == (4, 1) and y1[:, 0].tolist() == [1, 2, 3, 4]


def test_a_series_longer_than_memory_streams_from_its_file_one_chunk_at_a_time(tmp_path):
    """2**40 steps of float32 (4 TiB: more than any machine's memory) in a sparse chunked dataset:
    only the written chunks take room on disk. The loader reads the rows of each batch only."""
    steps, chunk = 2**40, 1000
    path = tmp_path / "long.h5"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("x", shape=(steps, 1), dtype="f4", chunks=(65536, 1))
        d[: 3 * chunk, 0] = np.arange(3 * chunk)
        d[steps - 2000 :, 0] = -np.arange(2000) - 1
        f["y"] = np.zeros((2, 1), dtype="f4")  # a short second series in the other lane
        f["y2"] = np.ones((2, 1), dtype="f4")
    assert path.stat().st_size < 2**22
    assert 4 * steps > os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # it could not be read whole
    reads = []

    class Recorded(H5Series):  # the real reads, recorded
        def read(self, start, stop):
            reads.append(stop - start)
            return super().read(start, stop)

    long, short = h5_series(path, x=["x", "y"], y=["x", "y2"])
    long.__class__ = Recorded
    loader = StreamLoader([long, short], lanes=2, chunk_steps=chunk)
    assert len(loader) == steps // chunk + 1
    it = iter(loader)
    head = [next(it) for _ in range(3)]
    assert [b["x"][0, :, 0].tolist() for b in head] == [list(range(k * chunk, (k + 1) * chunk)) for k in range(3)]
    state = {**loader.state_dict(), "position": len(loader) - 2}  # jump to the end of the epoch
    loader.load_state_dict(state)
    tail = list(loader)
    values = torch.cat([tail[0]["x"][0, :, 0], tail[1]["x"][0, :, 0][tail[1]["mask"][0]]])
    assert values.tolist() == (-np.arange(2000) - 1)[-(chunk + steps % chunk) :].tolist()
    assert tail[1]["mask"][0].sum() == steps % chunk and not tail[1]["mask"][1].any()
    assert max(reads) <= chunk and len(reads) == 5


def test_a_loader_over_a_file_pickles_and_reads_again(tmp_path):
    path = _file(tmp_path / "s.h5", x=np.arange(8.0)[:, None], y=np.arange(8.0)[:, None])
    loader = StreamLoader(h5_series(path), lanes=1, chunk_steps=3)
    before = [b["x"] for b in loader]
    after = [b["x"] for b in pickle.loads(pickle.dumps(loader))]  # e.g. to a spawned process
    assert all(torch.equal(a, b) for a, b in zip(before, after)) and len(after) == 3


def test_file_problems_name_the_file_and_the_key(tmp_path):
    path = _file(tmp_path / "s.h5", x=np.zeros((5, 2)), y=np.zeros((4, 1)), cube=np.zeros((2, 2, 2)), g__a=np.zeros(3))
    with pytest.raises(
        DataFileError,
        match=r"Argument x names dataset 'inputs' of .*s\.h5, which is missing; "
        r"the file's datasets include: cube, g/a, x, y",
    ):
        h5_series(path, x="inputs")
    with pytest.raises(DataFileError, match=r"Argument y names dataset 'g' of .*s\.h5, which is a group"):
        h5_series(path, x="x", y="g")
    with pytest.raises(DataFileError, match=r"'x' \(5 steps\) and 'y' \(4 steps\) of .*s\.h5 should have the same"):
        h5_series(path)
    with pytest.raises(DataFileError, match=r"Dataset 'cube' of .*s\.h5 should be \(steps,\) or \(steps, features\)"):
        h5_series(path, x="cube", y="cube")
    with pytest.raises(DataFileError, match=r"Argument group names 'x' of .*s\.h5, which is not a group"):
        h5_series(path, group="x")
    with pytest.raises(DataFileError, match=r"Group 'g' of .*s\.h5 has no member holding datasets 'x' and 'y'"):
        h5_series(path, group="g")
    with pytest.raises(DataFileError, match=r"has 5 steps, too few for horizon=5"):
        h5_series(path, x="x", y="x", horizon=5)
    with pytest.raises(DataFileError, match=r"Argument path should be an HDF5 file, got .*none\.h5, which does not"):
        h5_series(tmp_path / "none.h5")
    (tmp_path / "text.h5").write_text("not hdf5")
    with pytest.raises(DataFileError, match=r"got .*text\.h5, which is not a readable one"):
        h5_series(tmp_path / "text.h5")
    with pytest.raises(ValueError, match=r"Arguments x and y should name as many datasets, got 2 and 1"):
        h5_series(path, x=["x", "x"], y="x")
    with pytest.raises(TypeError, match=r"Argument x should be a dataset name or a non-empty list of them"):
        h5_series(path, x=[])


@pytest.mark.parametrize(
    "items, error, match",
    [
        ("xy", TypeError, r"Argument series should be a list of \(x, y\) pairs or H5Series, got str"),
        (
            [(np.zeros((3, 2)), np.zeros((3, 1))), (np.zeros((3, 3)), np.zeros((3, 1)))],
            ValueError,
            r"series\[1\] should have F = 2 inputs and O = 1 targets like series\[0\], got F = 3, O = 1",
        ),
        (
            [(np.zeros((3, 2)), np.zeros((3, 1))), (np.zeros((3, 2), "f4"), np.zeros((3, 1), "f4"))],
            ValueError,
            r"series\[1\] should have the dtypes of series\[0\] \(x torch.float64, y torch.float64\), got x torch.float32",
        ),
        ([(np.zeros((0, 2)), np.zeros((0, 1)))], ValueError, r"series\[0\] should hold .* the same T >= 1"),
        ([np.zeros((3, 2))], TypeError, r"series\[0\] should be an \(x, y\) pair, a mapping with keys 'x' and 'y'"),
        ([([1.0], [2.0])], TypeError, r"series\[0\] x should be a numpy array or a torch tensor, got list"),
    ],
)
def test_bad_series_are_refused_by_index(items, error, match):
    with pytest.raises(error, match=match):
        as_series(items)


def test_mappings_and_tensors_are_series_too():
    (s,) = as_series([{"x": torch.ones(4, 2), "y": torch.zeros(4, 1)}])
    assert len(s) == 4 and s.read(1, 3)[0].shape == (2, 2)


@pytest.mark.parametrize("horizon", [0, 5, True])
def test_forecast_pair_refuses_a_horizon_outside_the_series(horizon):
    with pytest.raises(ValueError, match=r"Argument horizon should be an integer from 1 to 4 \(the series has 5"):
        forecast_pair(np.zeros(5), horizon=horizon)
