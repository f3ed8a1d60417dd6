import logging
import re

import h5py
import numpy as np
import pytest
import torch

from ignite_lstm.app.config.schema import validate_config
from ignite_lstm.app.task.dataset import (
    SPLITS,
    ShardSampler,
    SignalDataset,
    batch_problem,
    ensure_split,
    setup_data,
    split_params,
)
from ignite_lstm.app.task.generator import generate_split
from ignite_lstm.app.task.h5io import DataFileError, split_filename

PARAMS = dict(
    frequencies=[1.0, 3.0, 5.0],
    fs=50.0,
    duration=0.2,
    amplitude_range=[0.8, 1.2],
    phase_scale=0.01,
    noise_sigma=0.0,
    n_mixtures=2,
    seed=1,
)


def _arrays():
    mixture = np.arange(2 * 4, dtype=np.float32).reshape(2, 4)  # (M=2, T=4)
    target = -np.arange(3 * 4, dtype=np.float32).reshape(3, 4)  # (F=3, T=4)
    return mixture, target


def test_length_order_shapes_and_dtypes():
    mixture, target = _arrays()
    ds = SignalDataset(mixture, target)
    assert len(ds) == 6
    assert (ds.n_mixtures, ds.n_frequencies, ds.n_steps) == (2, 3, 4)
    assert [ds.frequency_of(i) for i in range(6)] == [0, 1, 2, 0, 1, 2]
    assert ds.frequency_index.tolist() == [0, 1, 2, 0, 1, 2]
    for i in range(6):
        m, k = divmod(i, 3)
        x, y = ds[i]
        assert x.shape == (4, 4) and x.dtype == torch.float32
        assert y.shape == (4, 1) and y.dtype == torch.float32
        np.testing.assert_array_equal(x[:, 0].numpy(), mixture[m])
        np.testing.assert_array_equal(x[:, 1:].numpy(), np.tile(np.eye(3)[k], (4, 1)))
        np.testing.assert_array_equal(y[:, 0].numpy(), target[k])


def test_input_scale_and_tensor_inputs():
    mixture, target = _arrays()
    ds = SignalDataset(torch.from_numpy(mixture).double(), torch.from_numpy(target), input_scale=2.5)
    x, y = ds[4]  # m = 1, k = 1
    np.testing.assert_array_equal(x[:, 0].numpy(), 2.5 * mixture[1])
    assert x[:, 1:].tolist() == [[0.0, 1.0, 0.0]] * 4
    np.testing.assert_array_equal(y[:, 0].numpy(), target[1])


def test_items_are_not_affected_by_later_changes_to_inputs():
    mixture, target = _arrays()
    ds = SignalDataset(mixture, target)
    target[0] = 100.0
    mixture[0] = 100.0
    x, y = ds[0]
    assert y[0, 0].item() == 0.0 and x[0, 0].item() == 0.0


def test_index_and_argument_errors():
    mixture, target = _arrays()
    ds = SignalDataset(mixture, target)
    assert ds.frequency_of(-1) == 2
    with pytest.raises(IndexError, match=r"Index 6 is out of range for a dataset of length 6\."):
        ds[6]
    with pytest.raises(ValueError, match=r"Argument mixture should be 2-D, got shape \(8,\)\."):
        SignalDataset(mixture.reshape(-1), target)
    with pytest.raises(
        ValueError, match=r"Arguments mixture and target should have the same number of steps, got 4 and 3\."
    ):
        SignalDataset(mixture, target[:, :3])
    with pytest.raises(TypeError, match=r"Argument target should be a numpy array or a torch tensor, got list\."):
        SignalDataset(mixture, target.tolist())
    with pytest.raises(ValueError, match=r"Argument input_scale should be finite, got nan\."):
        SignalDataset(mixture, target, input_scale=float("nan"))


def test_dataset_from_generated_split():
    data = generate_split(**PARAMS)
    ds = SignalDataset(data.mixture, data.target, input_scale=4.0)
    assert len(ds) == 6
    x, y = ds[5]  # m = 1, k = 2
    np.testing.assert_array_equal(x[:, 0].numpy(), 4.0 * data.mixture[1])
    np.testing.assert_array_equal(y[:, 0].numpy(), data.target[2])


def test_ensure_split_generates_once_then_reuses(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ignite_lstm.app.task.dataset")
    directory = tmp_path / "cache"
    path, data = ensure_split(directory, "train", PARAMS)
    assert path == directory / split_filename("train", PARAMS)
    assert "Generated train split" in caplog.text
    reference = generate_split(**PARAMS)
    np.testing.assert_array_equal(data.mixture, reference.mixture)
    np.testing.assert_array_equal(data.target, reference.target)
    stat = path.stat()

    caplog.clear()
    path2, data2 = ensure_split(directory, "train", dict(PARAMS, fs=50))
    assert path2 == path
    assert "Reusing train split" in caplog.text
    stat2 = path.stat()
    assert (stat2.st_ino, stat2.st_mtime_ns, stat2.st_size) == (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    np.testing.assert_array_equal(data2.mixture, data.mixture)
    assert sorted(p.name for p in directory.iterdir()) == [path.name]


def test_ensure_split_test_split_has_its_own_file(tmp_path):
    train_path, train = ensure_split(tmp_path, "train", PARAMS)
    test_path, test = ensure_split(tmp_path, "test", dict(PARAMS, seed=2))
    assert train_path != test_path
    np.testing.assert_array_equal(train.target, test.target)
    assert not np.array_equal(train.mixture, test.mixture)


def test_ensure_split_refuses_a_tampered_file(tmp_path):
    path, _ = ensure_split(tmp_path, "train", PARAMS)
    with h5py.File(path, "r+") as f:
        f.attrs["noise_sigma"] = 0.5
    before = path.read_bytes()
    with pytest.raises(
        DataFileError,
        match=rf"Data file {re.escape(str(path))} was generated with other parameters: "
        rf"noise_sigma: file 0\.5 vs expected 0\.0\. Delete {re.escape(str(path))} to have it generated again\.",
    ):
        ensure_split(tmp_path, "train", PARAMS)
    assert path.read_bytes() == before  # never overwritten silently


def test_ensure_split_refuses_a_corrupt_file(tmp_path):
    path = tmp_path / split_filename("train", PARAMS)
    path.write_text("not hdf5")
    with pytest.raises(DataFileError, match=rf"{re.escape(str(path))} is not an HDF5 file\. Delete"):
        ensure_split(tmp_path, "train", PARAMS)
    assert path.read_text() == "not hdf5"


def test_shard_sampler_gives_every_index_to_exactly_one_rank():
    for world in (1, 2, 3, 4):
        for length in range(8):
            shards = [list(ShardSampler(length, rank, world)) for rank in range(world)]
            assert sorted(i for shard in shards for i in shard) == list(range(length)), (world, length)
            assert [len(ShardSampler(length, rank, world)) for rank in range(world)] == [len(s) for s in shards]


def test_batch_problem_names_the_key_the_value_and_a_multiple_that_fits():
    assert batch_problem(5, 2) == (
        "train.batch_size: 5 is not divisible by the 2 processes (each trains on an "
        "equal share of the global batch); use a multiple of 2"
    )
    assert batch_problem(4, 2) is None and batch_problem(7, 1) is None


def _tiny(tmp_path, seed: int = 0):
    return validate_config(
        {
            "seed": seed,
            "data": {
                "dir": str(tmp_path),
                "frequencies": [1.0, 3.0],
                "fs": 100.0,
                "duration": 0.5,
                "train": {"mixtures": 3},
            },
            "train": {"batch_size": 4},
            "eval": {"batch_size": 5},
        }
    )


def test_setup_data_builds_the_three_splits_and_their_loaders(tmp_path):
    cfg = _tiny(tmp_path)
    data = setup_data(cfg)
    datasets = data["datasets"]
    assert {s: len(d) for s, d in datasets.items()} == {"train": 6, "val": 2, "test": 2}  # mixtures x 2 frequencies
    assert data["files"] == {s: tmp_path / split_filename(s, split_params(cfg.data, s)) for s in SPLITS}
    assert all(path.is_file() for path in data["files"].values())
    assert [x.shape for x, _ in data["train_loader"]] == [(4, 50, 3), (2, 50, 3)]  # the global batch on one process
    for split, loader in data["eval_loaders"].items():  # every sequence once, in order, in batches of at most 5
        batches = list(loader)
        assert [len(x) for x, _ in batches] == ([5, 1] if split == "train" else [2]), split
        for i in (0, 1):  # x, y
            expected = torch.stack([datasets[split][n][i] for n in range(len(datasets[split]))])
            torch.testing.assert_close(torch.cat([b[i] for b in batches]), expected, rtol=0, atol=0)


@pytest.mark.parametrize("seed, epoch", [(0, 0), (0, 1), (5, 0)])
def test_setup_data_shuffles_by_the_seed_and_the_epoch_only(tmp_path, seed, epoch):
    sampler = setup_data(_tiny(tmp_path, seed))["train_loader"].sampler
    sampler.set_epoch(epoch)  # what Ignite's engine does at every epoch (a resumed run included)
    expected = torch.randperm(6, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    assert list(sampler) == expected
