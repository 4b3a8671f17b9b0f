"""Our SynthSAEBench metrics equal SAELens' `eval_sae_on_synthetic_data` on the same SAE and samples.
Optional: skipped where sae-lens is not installed (the side venv has it; see
benchmarks/saelens_eval_check.py for the same check on trained SAEs)."""

import numpy as np
import pytest
import torch

sae_lens = pytest.importorskip("sae_lens")

from broken_latents.analysis.scale import FiringTally, decoder_scores  # noqa: E402
from broken_latents.output.saelens_format import load_sae, write_saelens  # noqa: E402


class _Replay:
    def __init__(self, f_BN):
        self.f_BN, self.position = f_BN, 0

    def sample(self, n):
        self.position += n
        return self.f_BN[self.position - n : self.position]


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_mcc_uniqueness_f1_equal_saelens(tmp_path, activation):
    from sae_lens import SAE
    from sae_lens.synthetic import FeatureDictionary
    from sae_lens.synthetic.evals import eval_sae_on_synthetic_data

    rng = np.random.default_rng(0)
    F, D, K, B = 60, 24, 40, 3000
    directions_ND = rng.normal(size=(F, D)).astype(np.float32)
    directions_ND /= np.linalg.norm(directions_ND, axis=1, keepdims=True)
    f_BN = ((rng.random((B, F)) < 0.05) * rng.uniform(1, 3, (B, F))).astype(np.float32)
    # An imperfect SAE: noisy copies of some features, a few latents on the same feature, one dead.
    W_dec_KD = directions_ND[rng.choice(F, K - 4, replace=False)] + 0.3 * rng.normal(
        size=(K - 4, D)
    )
    W_dec_KD = np.concatenate([W_dec_KD, W_dec_KD[:3] + 0.05, np.zeros((1, D))]).astype(np.float32)
    tensors = {
        "W_enc": W_dec_KD.T.copy(),
        "W_dec": W_dec_KD,
        "b_enc": np.full(K, -0.3, np.float32),
        "b_dec": np.zeros(D, np.float32),
        "threshold": np.full(K, 0.4, np.float32),
    }
    folder = write_saelens(tmp_path / "sae", tensors, activation)

    sae = SAE.load_from_disk(str(folder), device="cpu")
    dictionary = FeatureDictionary(F, D, bias=False, initializer=None)
    dictionary.feature_vectors.data.copy_(torch.from_numpy(directions_ND))
    theirs = eval_sae_on_synthetic_data(
        sae, dictionary, _Replay(torch.from_numpy(f_BN)), num_samples=B, batch_size=700
    )

    ours_sae = load_sae(folder)  # our own encoder of the folder, not SAELens'
    x_BD = f_BN @ directions_ND
    h_BK = ours_sae.encode(x_BD)
    x_hat_BD = h_BK @ W_dec_KD
    cos_KF = (
        W_dec_KD / np.linalg.norm(W_dec_KD, axis=1, keepdims=True).clip(1e-8)
    ) @ directions_ND.T
    decoder = decoder_scores(cos_KF)
    tally = FiringTally(decoder.best_feature_K, [], np.zeros(0))
    tally.add(
        *(
            torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
            for a in (h_BK, f_BN, x_BD, x_hat_BD)
        )
    )
    ours = {"mcc": decoder.mcc, "uniqueness": decoder.uniqueness, **tally.scores()}

    assert (
        0.05 < ours["f1"] < 0.95 and ours["uniqueness"] < 1
    )  # a case where the metrics have work to do
    assert ours["mcc"] == pytest.approx(theirs.mcc, abs=1e-3)
    assert ours["uniqueness"] == pytest.approx(theirs.uniqueness, abs=1e-3)
    assert ours["f1"] == pytest.approx(theirs.classification.f1_score, abs=1e-3)
    assert ours["precision"] == pytest.approx(theirs.classification.precision, abs=1e-3)
    assert ours["recall"] == pytest.approx(theirs.classification.recall, abs=1e-3)
    assert ours["sae_l0"] == pytest.approx(theirs.sae_l0, abs=1e-3)
    assert ours["true_l0"] == pytest.approx(theirs.true_l0, abs=1e-3)
    assert ours["dead_count"] == theirs.dead_latents
    assert ours["shrinkage"] == pytest.approx(theirs.shrinkage, abs=1e-3)
    assert ours["explained_variance"] == pytest.approx(theirs.explained_variance, abs=1e-3)
