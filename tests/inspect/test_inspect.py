"""`broken-latents inspect` end to end: an SAE and activations made here in plain numpy, from a
world the training code never sees; the broken latent is flagged, the clean one is not; bad
input exits 2 naming the problem and leaves nothing behind."""

import json

import numpy as np
import pytest
from safetensors.numpy import save_file

from broken_latents.inspect import detect as inspect_sae
from broken_latents.cli import main
from broken_latents.inspect.detect import Reservoirs
from broken_latents.analysis.score import load_score_model
from broken_latents.analysis.signals import SIGNALS
from broken_latents.output.saelens_format import write_saelens
from inspecting import inspect_latents

D, N = 8, 20_000
CONTRACT_KEYS = {"latent", "fires", "peaks", "mixture", "threshold", "broken", "score", "signals"}


def _world(n: int = N, seed: int = 5):
    """Parent f0 (rate 0.25), child f1 (rate 0.15, switches the parent on), f2 and f3 independent
    (0.2); magnitudes ~ N(1, 0.05); a little isotropic noise. Returns (x [n, D], directions [4, D])."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(rng.normal(size=(D, D)))[0].T[:4]
    on = rng.random((n, 4)) < [0.25, 0.15, 0.2, 0.2]
    on[:, 0] |= on[:, 1]
    magnitudes = np.clip(rng.normal(1.0, 0.05, (n, 4)), 0, None)
    x = (on * magnitudes) @ directions + rng.normal(0, 0.01, (n, D))
    return x.astype(np.float32), directions


def _tied_sae(directions: np.ndarray) -> dict:
    """Latent 0 merges the child with its parent, as the post's broken tied latents do; latents 1
    and 2 are the clean independent features."""
    broken = directions[1] + 0.4 * directions[0]
    W_dec = np.stack([broken / np.linalg.norm(broken), directions[2], directions[3]]).astype(
        np.float32
    )
    return {
        "W_enc": W_dec.T.copy(),
        "W_dec": W_dec,
        "b_enc": np.zeros(3, np.float32),
        "b_dec": np.zeros(D, np.float32),
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    x, directions = _world()
    weights = _tied_sae(directions)
    write_saelens(root / "sae", weights, "relu", tied=True)
    save_file(weights, str(root / "tied-seed0.safetensors"))  # a run's weights file
    np.save(root / "acts.npy", x)
    save_file(
        {"acts": x.astype(np.float16), "tokens": np.arange(N, dtype=np.int64)},
        str(root / "acts.safetensors"),
    )
    return root


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    monkeypatch.setattr(
        inspect_sae, "CHUNK_BYTES", 4 * (D + 3) * 3000
    )  # ~3000 rows a chunk: several chunks


def _check_flags(out, samples: int) -> dict:
    result = json.loads((out / "inspect.json").read_text())
    assert result["samples"] == samples
    assert isinstance(result["sae"], str)
    latents = result["latents"]
    assert [r["latent"] for r in latents] == [0, 1, 2]
    for r in latents:
        assert CONTRACT_KEYS <= set(r)
        assert all(set(c) == {"mean", "std", "weight"} for c in r["mixture"])
    broken, clean = latents[0], latents[1]
    assert broken["broken"] and broken["peaks"] == 2
    # Parent alone: 0.4 / |f1 + 0.4 f0| = 0.371; child with parent: 1.4 / 1.077 = 1.300.
    assert broken["peak_means"] == pytest.approx([0.371, 1.300], abs=0.03)
    assert 0.371 < broken["threshold"] < 1.300
    # The parent alone (0.25 x 0.85 of inputs) is the main, heaviest peak; the child's (0.15) is apart from it.
    assert broken["signals"]["peak_separated_weight"] == pytest.approx(0.15 / 0.3625, abs=0.04)
    assert set(broken["signals"]) == set(SIGNALS)
    assert result["threshold_score"] == load_score_model().threshold
    assert broken["score"] >= result["threshold_score"] > max(r["score"] for r in latents[1:])
    # It fires when the parent does (0.3625) and, from the noise alone, on half the other samples.
    assert broken["fires"] == pytest.approx(0.3625 + 0.5 * 0.6375, abs=0.015)
    for r in latents[1:]:
        assert not r["broken"] and r["peaks"] == 1 and r["signals"]["peak_separated_weight"] == 0
    assert clean["peak_means"] == pytest.approx([1.0], abs=0.02)
    assert (out / "figures" / "latent-0.png").is_file()
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "latent-0" in page and 'src="figures' not in page
    return result


def test_npy_with_a_saelens_folder(files, tmp_path):
    main(
        [
            "inspect",
            str(files / "sae"),
            "--activations",
            str(files / "acts.npy"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _check_flags(tmp_path / "out", N)


def test_float16_safetensors_with_key_and_limit_and_run_weights(files, tmp_path):
    main(
        [
            "inspect",
            str(files / "tied-seed0.safetensors"),
            "--activations",
            str(files / "acts.safetensors"),
            "--key",
            "acts",
            "--limit",
            "15000",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    _check_flags(tmp_path / "out", 15_000)


def test_reservoir_is_a_uniform_sample():
    reservoirs = Reservoirs(latents=2, size=1000, seed=0)
    stream = np.arange(1, 50_001, dtype=np.float32)
    for chunk in np.array_split(stream, 17):
        reservoirs.add(np.stack([chunk, np.zeros_like(chunk)], axis=1))
    sample = reservoirs.sample(0)
    assert sample.size == 1000 and np.unique(sample).size == 1000
    assert sample.mean() == pytest.approx(25_000, rel=0.05)  # early and late values alike
    assert np.quantile(sample, 0.1) == pytest.approx(5_000, rel=0.2)
    assert reservoirs.sample(1).size == 0 and reservoirs.seen_K.tolist() == [50_000, 0]


def test_reservoir_keeps_what_the_vectorised_algorithm_keeps():
    """The compiled update against algorithm R written with numpy (the update before it): the same
    uniforms, the same slots, over chunks where latents fire at different rates."""
    rng = np.random.default_rng(5)
    h = np.where(rng.random((3000, 6)) < [0.9, 0.5, 0.1, 0.02, 0.0, 1.0], rng.random((3000, 6)), 0)
    reservoirs = Reservoirs(latents=6, size=50, seed=1)
    values, seen, draws = (
        np.zeros((6, 50), np.float32),
        np.zeros(6, np.int64),
        np.random.default_rng(1),
    )
    for chunk in np.array_split(h.astype(np.float32), 7):
        reservoirs.add(chunk)
        rows, cols = np.nonzero(chunk > 0)
        order = np.argsort(cols, kind="stable")
        rows, cols = rows[order], cols[order]
        counts = np.bincount(cols, minlength=6)
        t = seen[cols] + np.arange(cols.size) - (np.cumsum(counts) - counts)[cols]
        slot = np.where(t < 50, t, (draws.random(cols.size) * (t + 1)).astype(np.int64))
        keep = slot < 50
        flat = cols[keep] * 50 + slot[keep]
        last = flat.size - 1 - np.unique(flat[::-1], return_index=True)[1]
        values.reshape(-1)[flat[last]] = chunk[rows, cols][keep][last]
        seen += counts
    assert np.array_equal(reservoirs.values_KR, values) and np.array_equal(reservoirs.seen_K, seen)
    assert seen[0] > 2000 and seen[4] == 0


def _bad(files, tmp_path, capsys, argv, problem):
    out = tmp_path / "outdir" / "out"
    with pytest.raises(SystemExit) as exc:
        main(["inspect", *argv, "--out", str(out)])
    raw = capsys.readouterr().err
    err = " ".join(raw.split())
    assert exc.value.code == 2 and raw.strip().count("\n") == 0  # one line
    assert problem in err and "Traceback" not in err
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir()))


def test_missing_file(files, tmp_path, capsys):
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(files / "nope.npy")],
        "--activations: no such file",
    )


def test_missing_sae(files, tmp_path, capsys):
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "nosae"), "--activations", str(files / "acts.npy")],
        "does not exist",
    )


def test_unknown_suffix(files, tmp_path, capsys):
    (tmp_path / "acts.csv").write_text("1,2\n")
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "acts.csv")],
        "expected a .npy or .safetensors file, got '.csv'",
    )


def test_d_mismatch(files, tmp_path, capsys):
    np.save(tmp_path / "wide.npy", np.zeros((10, D + 1), np.float32))
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "wide.npy")],
        f"D = {D + 1} per sample but the SAE takes d_in = {D}",
    )


def test_nan_found_while_reading(files, tmp_path, capsys):
    x = np.load(files / "acts.npy")
    x[12_345, 3] = np.nan  # in a later chunk: found while streaming, after the checks up front
    np.save(tmp_path / "nan.npy", x)
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "nan.npy")],
        "NaN or infinite values (first at sample 12345)",
    )


def test_unknown_architecture(files, tmp_path, capsys):
    folder = write_saelens(tmp_path / "gated", _tied_sae(_world(10)[1]), "relu")
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "architecture": "gated"}))
    _bad(
        files,
        tmp_path,
        capsys,
        [str(folder), "--activations", str(files / "acts.npy")],
        "architecture 'gated'",
    )


def test_missing_key(files, tmp_path, capsys):
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(files / "acts.safetensors")],
        "holds 2 tensors (acts, tokens); name one with --key",
    )


def test_key_not_in_file(files, tmp_path, capsys):
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(files / "acts.safetensors"), "--key", "resid"],
        "has no tensor 'resid'",
    )


def test_not_two_dimensional(files, tmp_path, capsys):
    np.save(tmp_path / "cube.npy", np.zeros((4, 5, D), np.float32))
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "cube.npy")],
        "expected a 2-D array [N, D], got shape [4, 5, 8]",
    )


def test_out_that_is_not_an_inspect_folder_is_refused(files, tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "inspect",
                str(files / "sae"),
                "--activations",
                str(files / "acts.npy"),
                "--out",
                str(keep),
            ]
        )
    assert exc.value.code == 2 and "not an earlier inspect folder" in capsys.readouterr().err
    assert [p.name for p in keep.iterdir()] == ["notes.txt"]


def test_a_failure_while_writing_leaves_the_earlier_inspect_folder_whole(
    files, tmp_path, monkeypatch
):
    """The folder is written through files/atomic.py: a crash half-way (here in the figures) leaves
    the earlier inspect.json as it was and no partial folder beside it."""
    out = tmp_path / "out"
    args = [
        "inspect",
        str(files / "sae"),
        "--activations",
        str(files / "acts.npy"),
        "--out",
        str(out),
    ]
    main(args)
    before = (out / "inspect.json").read_bytes()

    def crash(*_args, **_kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(inspect_sae, "histogram", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        main(args)
    assert (out / "inspect.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_histogram_of_a_latent_firing_at_one_exact_value(tmp_path):
    """An exact magnitude and no interference: every firing is the same float32 up to rounding.
    The figure must still draw (numpy refuses 100 bins over a span of a few float32 steps)."""
    from broken_latents.inspect.detect import histogram
    from broken_latents.analysis.peaks import fit_peak_model

    acts = np.full(5000, 17.000002, dtype=np.float32)
    acts[::2] = np.nextafter(np.float32(17.000002), np.float32(18))
    model = fit_peak_model(acts)
    histogram(
        acts,
        model,
        {"latent": 0, "peaks": model.n_peaks, "broken": False, "score": 0.0},
        tmp_path / "h.png",
    )
    assert (tmp_path / "h.png").stat().st_size > 0


def test_truncated_npy(files, tmp_path, capsys):
    data = (files / "acts.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(data[: len(data) // 2])
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "cut.npy")],
        "is not a readable .npy file",
    )


def test_truncated_safetensors(files, tmp_path, capsys):
    data = (files / "acts.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "cut.safetensors"), "--key", "acts"],
        "cut.safetensors",
    )


def test_integer_activations_are_refused(files, tmp_path, capsys):
    np.save(tmp_path / "ints.npy", np.zeros((10, D), np.int32))
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "ints.npy")],
        "expected float32 or float16, got int32",
    )


def test_key_with_a_npy_file_is_refused(files, tmp_path, capsys):
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(files / "acts.npy"), "--key", "acts"],
        "--key: applies to .safetensors files only",
    )


def test_wrong_shape_one_dimensional(files, tmp_path, capsys):
    np.save(tmp_path / "flat.npy", np.zeros(100, np.float32))
    _bad(
        files,
        tmp_path,
        capsys,
        [str(files / "sae"), "--activations", str(tmp_path / "flat.npy")],
        "expected a 2-D array [N, D], got shape [100]",
    )


def test_memory_is_bounded_by_chunk_and_reservoirs_not_rows(tmp_path, monkeypatch):
    """Peak memory of the streaming passes (tracemalloc sees numpy's buffers) over a 16x longer file stays
    within 5% of the short one's: only reservoirs, one chunk and the pair counts are held."""
    import tracemalloc

    from broken_latents.output.saelens_format import load_sae

    K, dim = 64, 16
    rng = np.random.default_rng(0)
    W = rng.normal(size=(K, dim)).astype(np.float32)
    write_saelens(
        tmp_path / "sae",
        {
            "W_enc": W.T.copy(),
            "W_dec": W,
            "b_enc": np.zeros(K, np.float32),
            "b_dec": np.zeros(dim, np.float32),
        },
        "relu",
    )
    sae = load_sae(tmp_path / "sae")
    monkeypatch.setattr(inspect_sae, "CHUNK_BYTES", 2**20)
    monkeypatch.setattr(inspect_sae, "RESERVOIR", 500)
    peaks = []
    for rows in (10_000, 160_000):
        path = tmp_path / f"acts{rows}.npy"
        np.save(path, rng.normal(size=(rows, dim)).astype(np.float32))
        file = inspect_sae.open_activations(path, None)
        tracemalloc.start()
        fires_K, max_K, _ = inspect_sae.first_pass(sae, file, rows)
        inspect_sae.coactivation_pass(sae, file, rows, max_K, np.tile([0.1, 0.5], (K, 1)))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert fires_K.sum() > 0.4 * rows * K  # it really read every row
    assert peaks[1] < 1.05 * peaks[0]
    assert (
        peaks[1] < 16 * 2**20
    )  # a 1 MiB chunk, its boolean and pair temporaries, 64 x 500 reservoirs


def test_absorbed_untied_parent_with_one_clean_peak_is_flagged(tmp_path):
    """Issue 18's miss: an untied SAE whose parent latent has a clean decoder and one clean peak, but whose
    encoder subtracts the child, so it falls silent exactly when the child's latent (decoding child +
    parent) fires. The shipped score flags both; the clean latents stay below the threshold."""
    rng = np.random.default_rng(3)
    n, d = 20_000, np.eye(D)[:4]
    on = rng.random((n, 4)) < [0.25, 0.1, 0.2, 0.2]
    on[:, 0] |= on[:, 1]
    x = ((on * np.clip(rng.normal(1.0, 0.05, (n, 4)), 0, None)) @ d).astype(np.float32)
    W_dec = np.stack([d[0], (d[0] + d[1]) / np.sqrt(2), d[2], d[3]]).astype(np.float32)
    W_enc = np.stack([d[0] - d[1], d[1] * np.sqrt(2), d[2], d[3]]).T.astype(np.float32)
    write_saelens(
        tmp_path / "sae",
        {
            "W_enc": W_enc,
            "W_dec": W_dec,
            "b_enc": np.zeros(4, np.float32),
            "b_dec": np.zeros(D, np.float32),
        },
        "relu",
    )
    np.save(tmp_path / "acts.npy", x)
    parent, child, *clean = inspect_latents(
        tmp_path / "sae", tmp_path / "acts.npy", tmp_path / "out"
    )
    assert (
        parent["peaks"] == 1 and parent["signals"]["peak_separated_weight"] == 0
    )  # peaks alone miss it
    assert parent["broken"] and child["broken"]
    assert not any(r["broken"] for r in clean)
    page = (tmp_path / "out" / "report.html").read_text()
    assert all(name in page for name in SIGNALS)


def test_inspect_json_round_trips_through_the_typed_result(files, tmp_path):
    """inspect.json read as InspectResult writes back the same bytes (null key and thresholds
    included), and from_json(to_json(x)) == x; a latent's fields are typed (mixture components)."""
    from broken_latents.inspect.result import InspectLatent, InspectResult

    outcome = inspect_sae.inspect_sae(
        files / "sae", files / "acts.npy", out=tmp_path / "out", limit=4000, progress=False
    )
    text = (tmp_path / "out" / "inspect.json").read_text()
    typed = InspectResult.from_json(json.loads(text))
    assert json.dumps(typed.to_json(), indent=1) == text
    assert InspectResult.from_json(typed.to_json()) == typed
    assert (
        typed.key is None and "key" in typed.to_json()
    )  # a .npy has no key: still written, as null
    assert isinstance(typed.latents[0], InspectLatent) and typed.latents[0].mixture[0].weight > 0
    assert set(typed.latents[0].to_json()) >= CONTRACT_KEYS
    silent = {
        "latent": 3,
        "fires": 0.0,
        "peaks": 0,
        "mixture": [],
        "threshold": None,
        "broken": False,
        "score": 0.0,
        "signals": {"s": 0.0},
        "peak_means": [],
        "max": 0.0,
        "floor": 0.0,
        "fitted": 0,
    }
    assert json.dumps(InspectLatent.from_json(silent).to_json()) == json.dumps(
        silent
    )  # as the untyped code wrote a silent latent
    assert outcome.result == typed.to_json()
