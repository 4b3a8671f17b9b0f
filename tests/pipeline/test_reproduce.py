"""`reproduce`: every experiment into its directory, one report; experiments over several world seeds pool them."""

from types import SimpleNamespace

import pytest

from broken_latents.config.schema import ExperimentConfig, SAEConfig, TrainConfig, WorldConfig
from broken_latents.experiments.checks import learns_exactly
from broken_latents.experiments.claims import Claim
from broken_latents.experiments.registry import Experiment
from broken_latents.pipeline.reproduce import pooled_claims, reproduce_all
from factories import claim_result, metrics, run_metrics, world_metrics


def _outcome(held: list[bool], max_cos: float):
    claim = claim_result(
        id="c",
        text="t",
        post="p",
        holds=sum(held) >= 2,
        seeds_held=sum(held),
        seeds_run=len(held),
        per_seed=held,
        detail="d",
    )
    return SimpleNamespace(
        metrics=metrics(claims=[claim], world=world_metrics(max_feature_cos=max_cos))
    )


def test_pooled_claims_add_seeds_over_geometries():
    (claim,) = pooled_claims(
        [_outcome([True, True, False], 0.05), _outcome([False, False, True], 0.06)]
    )
    assert (claim.seeds_held, claim.seeds_run, claim.holds) == (3, 6, False)
    assert claim.per_seed == [True, True, False, False, False, True]
    assert claim.detail.startswith("1/2 geometries held")
    assert "world seed 1 (max |cos| 0.060): 1/3" in claim.detail
    (alone,) = pooled_claims([_outcome([True, False, True], 0.05)])
    assert alone.detail == "d"  # a single geometry is reported as it is


@pytest.mark.slow
def test_reproduce_runs_every_geometry_and_pools_them(tmp_path):
    superposed = ExperimentConfig(
        name="tiny-superposition",
        world=WorldConfig(features=4, dim=3, firing=0.2, magnitude=1.0),
        train=TrainConfig(samples=60_000, lr=3e-3, eval_samples=5_000),
        sae=[SAEConfig(label="tied", latents=4)],
    )
    experiments = {
        "tiny-superposition": Experiment(
            superposed,
            [
                Claim(
                    "all",
                    "learns every feature",
                    "-",
                    learns_exactly("tied", lambda world, k: [0, 1, 2, 3], clean=0.5),
                )
            ],
            geometries=2,
        )
    }
    reproduce_all(
        seeds=2, out=tmp_path, quick=False, device="cpu", progress=False, experiments=experiments
    )
    assert (tmp_path / "tiny-superposition" / "metrics.json").is_file()
    assert (tmp_path / "tiny-superposition-world-seed-1" / "metrics.json").is_file()
    report = (tmp_path / "report.md").read_text()
    assert "/4 |" in report  # seeds pooled: 2 seeds x 2 world seeds
    assert (
        "geometries held" in report and "world seed 1 (max \\|cos\\| 0.333)" in report
    )  # pipes escaped
    assert report.count("## tiny-superposition") == 1  # one section per experiment
    assert (
        "- [tiny-superposition](#tiny-superposition): [all 0/4 fails](#tiny-superposition--claims)"
        in report
    )
    page = (tmp_path / "report.html").read_text()
    assert '<h1 id="tiny-superposition">' in page and 'id="tiny-superposition--claims"' in page
    assert (
        tmp_path / "tiny-superposition" / "report.html"
    ).is_file()  # every run writes its own page too


def test_a_claim_about_a_missing_sae_fails_with_that_said():
    from broken_latents.experiments.claims import evaluate_claims

    claim = Claim("x", "t", "p", learns_exactly("untied", lambda world, k: [0]))
    (result,) = evaluate_claims([claim], metrics(runs=[run_metrics(label="tied")]))
    assert not result.holds and "no SAE labelled 'untied'" in result.detail


def test_quick_reproduction_caps_budgets_and_draws_no_figures(tmp_path):
    from broken_latents.pipeline.reproduce import QUICK_SAMPLES

    cheap = ExperimentConfig(
        name="cheap",
        world=WorldConfig(features=3, dim=4, firing=0.3),
        train=TrainConfig(samples=40_000, eval_samples=5_000),
        sae=[SAEConfig(label="tied", latents=3)],
    )
    costly = ExperimentConfig(
        name="costly",
        world=WorldConfig(features=3, dim=4, firing=0.3),
        train=TrainConfig(samples=QUICK_SAMPLES * 4000, eval_samples=5_000),
        sae=[SAEConfig(label="tied", latents=3)],
    )
    import broken_latents.pipeline.reproduce as reproduce

    reproduce.QUICK_SAMPLES, saved = 20_000, QUICK_SAMPLES  # keep the test tiny: cap at 20k
    try:
        reproduce_all(
            seeds=1,
            out=tmp_path,
            quick=True,
            device="cpu",
            progress=False,
            experiments={"cheap": Experiment(cheap), "costly": Experiment(costly)},
        )
    finally:
        reproduce.QUICK_SAMPLES = saved
    import json

    assert (
        json.loads((tmp_path / "cheap" / "metrics.json").read_text())["samples"] == 20_480
    )  # capped: 20 batches
    assert not (tmp_path / "cheap" / "figures").exists()
    assert "**quick**" in (tmp_path / "report.md").read_text()
