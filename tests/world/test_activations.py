"""Stored activations: bad files are one ConfigError naming the field; the stream covers every row."""

import numpy as np
import pytest
from safetensors.numpy import save_file

from broken_latents.config.schema import ConfigError
from broken_latents.world.activations import (
    ActivationFile,
    ShuffledBatches,
    read_directions,
    read_labels,
)


def test_npy_is_memory_mapped_and_float16_reads_as_float32(tmp_path):
    x = np.arange(40, dtype=np.float16).reshape(10, 4)
    np.save(tmp_path / "x.npy", x)
    source = ActivationFile.open(tmp_path / "x.npy")
    assert isinstance(source.rows, np.memmap) and (source.n, source.dim) == (10, 4)
    assert source.read(2, 4).dtype == np.float32 and source.read(2, 4)[0, 0] == 8.0


def test_safetensors_by_key(tmp_path):
    save_file(
        {"acts": np.ones((6, 3), np.float32), "other": np.zeros(2, np.float32)},
        str(tmp_path / "a.safetensors"),
    )
    source = ActivationFile.open(tmp_path / "a.safetensors", key="acts")
    assert (source.n, source.dim) == (6, 3) and source.read(0, 6).sum() == 18
    with pytest.raises(ConfigError, match="activations_key.*no tensor 'missing'"):
        ActivationFile.open(tmp_path / "a.safetensors", key="missing")
    with pytest.raises(ConfigError, match="activations_key.*holds 2 tensors"):
        ActivationFile.open(tmp_path / "a.safetensors")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((4, 3, 2), np.float32), r"2-D array \[N, D\], got shape \[4, 3, 2\]"),
        (np.zeros((4, 3), np.int32), "float32 or float16, got int32"),
        (np.array([[0.0, 1.0], [np.nan, 2.0]], np.float32), "row 1 holds NaN"),
    ],
)
def test_bad_arrays(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(ConfigError, match=f"world.activations: .*{message}"):
        ActivationFile.open(tmp_path / "bad.npy")


def test_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        ActivationFile.open(tmp_path / "none.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ConfigError, match="expected a .npy or .safetensors file"):
        ActivationFile.open(tmp_path / "x.csv")


def test_labels_and_directions_must_fit_the_activations(tmp_path):
    np.save(tmp_path / "labels.npy", np.zeros((5, 2), bool))
    with pytest.raises(ConfigError, match=r"world.labels: .*N = 6"):
        read_labels(tmp_path / "labels.npy", rows=6)
    np.save(tmp_path / "dirs.npy", np.ones((2, 3), np.float32))
    with pytest.raises(ConfigError, match=r"world.directions: .*D = 4"):
        read_directions(tmp_path / "dirs.npy", dim=4)
    assert np.allclose(np.linalg.norm(read_directions(tmp_path / "dirs.npy", dim=3), axis=1), 1.0)


def test_each_epoch_visits_every_training_row_once(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(100, dtype=np.float32)[:, None])
    source = ActivationFile.open(tmp_path / "x.npy")
    train, test = source.split(0.2)
    assert (train, test) == (range(0, 80), range(80, 100))
    stream = ShuffledBatches(source, train, batch=8, seed=0, chunk_rows=16)
    seen = np.concatenate([stream.next()[:, 0] for _ in range(10)])
    assert sorted(seen) == list(range(80))  # one epoch, no held-out row
    assert (seen[:16] != np.arange(16)).any()  # shuffled
