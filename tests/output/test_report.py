"""Figures, report.md and the self-contained HTML page, on small hand-built metrics."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from broken_latents.analysis.metrics import (
    ClaimResult,
    FiringPattern,
    Metrics,
    PeakModelRecord,
    RunMetrics,
)
from broken_latents.output import plots
from broken_latents.output.report import (
    HtmlSection,
    claims_table,
    markdown_to_html,
    render_html,
    render_markdown,
    write_html,
)
from factories import as_older_version, claim_result, matches, metrics, run_metrics, world_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(label: str, seed: int, cos: float = 0.987, broken: tuple[int, ...] = ()) -> RunMetrics:
    """3 latents, 4 features: latent j matches feature j + 1."""
    decoder_cos = np.zeros((3, 4))
    for j in range(3):
        decoder_cos[j, j + 1] = cos if j == 0 else 1.0
    return run_metrics(
        decoder_cos.tolist(),
        label=label,
        architecture=label,
        seed=seed,
        matches=matches(*((j, j + 1, float(decoder_cos[j, j + 1])) for j in range(3))),
        learned_features=[j + 1 for j in range(3) if j not in broken],
        broken_latents=list(broken),
        activation_peaks=[1, 2, 1],
        peak_locations=[[4.0], [2.0, 3.0], [1.5]],
        mse=0.0123,
        l0=1.25,
        explained_variance=0.975,
        firing_patterns=[
            FiringPattern(features=[1], activations=[4.0, 0.0, 0.0]),
            FiringPattern(features=[1, 2], activations=[4.5, 2.25, 0.0]),
        ],
    )


def make_metrics(seeds: int = 1, claims: list[ClaimResult] | None = None) -> Metrics:
    return metrics(
        [make_run(label, s) for label in ("tied", "untied") for s in range(seeds)],
        name="tiny-world",
        description="A tiny world.",
        samples=1_000_000,
        samples_per_second=5e6,
        world=world_metrics(
            4,
            expected_mse=[0.5, 4.0, 2.0, 1.0],
            expected_mse_ranking=[1, 2, 3, 0],
            firing_rates=[0.5, 0.25, 0.125, 0.0625],
            magnitudes=[1.0, 4.0, 4.0, 4.0],
        ),
        claims=claims or [],
    )


def assert_png(path: Path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    return matplotlib.image.imread(path)


# -- figures ----------------------------------------------------------------------------------


def test_heatmap_shape_follows_matrix(tmp_path):
    plots.cos_heatmap(
        np.random.default_rng(0).uniform(-1, 1, (5, 20)), "wide", tmp_path / "wide.png"
    )
    plots.cos_heatmap(
        np.random.default_rng(0).uniform(-1, 1, (8, 4)), "tall", tmp_path / "tall.png"
    )
    wide, tall = assert_png(tmp_path / "wide.png"), assert_png(tmp_path / "tall.png")
    assert wide.shape[1] > 2.5 * wide.shape[0]  # 20 columns by 5 rows: clearly landscape
    assert tall.shape[0] > tall.shape[1]
    # The figure grows with the matrix, so every cell keeps room for its printed value.
    assert wide.shape[1] > 20 * 45 and tall.shape[0] > 8 * 45


def test_heatmap_writes_every_value_readably(tmp_path, monkeypatch):
    texts = []

    def record_texts(fig, path):
        texts.extend((t.get_text(), t.get_color()) for t in fig.axes[0].texts)
        fig.savefig(path)

    monkeypatch.setattr(plots, "_save", record_texts)
    plots.cos_heatmap([[0.9, -0.001], [-0.95, 0.1234]], "values", tmp_path / "values.png")
    assert texts == [("0.90", "white"), ("0.00", "black"), ("-0.95", "white"), ("0.12", "black")]


def test_histograms_count_peaks_and_mark_dead_latents(tmp_path, monkeypatch):
    titles = []

    def record_titles(fig, path):
        titles.extend(ax.get_title() for ax in fig.axes if ax.get_visible())
        fig.savefig(path)

    monkeypatch.setattr(plots, "_save", record_titles)
    acts = np.random.default_rng(0).uniform(0, 5, (500, 3))
    acts[:, 2] = 0.0
    acts[:50, 1] = 0.1  # below 10% of the max: left out of the panel, and the title says how many
    models = [
        PeakModelRecord.from_json(
            {
                "latent": 1,
                "mixture": [
                    {"mean": 2.0, "std": 0.3, "weight": 0.5},
                    {"mean": 3.0, "std": 0.3, "weight": 0.5},
                ],
                "peaks": 2,
                "peak_means": [2.0, 3.0],
                "threshold": 2.5,
                "floor": 1.0,
            }
        )
    ]
    plots.activation_histograms(
        acts, [[4.0], [2.0, 3.0], []], "hist", tmp_path / "hist.png", models
    )
    assert [t.split("\n")[0] for t in titles] == [
        "latent 0: 1 peak",
        "latent 1: 2 peaks",
        "latent 2: dead",
    ]
    for j in (0, 1):
        hidden = float((acts[:, j] <= 0.1 * acts[:, j].max()).mean())
        assert f"{hidden:.0%} of firings below 10% of max: not shown" in titles[j]
    assert_png(tmp_path / "hist.png")


@pytest.mark.slow
def test_write_run_figures_names_and_skips(tmp_path):
    metrics = make_metrics()
    acts = {"tied-seed0": np.random.default_rng(0).uniform(0, 5, (200, 3))}  # untied's are missing
    figures = plots.write_run_figures(metrics, acts, tmp_path / "figures")
    assert figures == {
        "world": ["figures/world.png"],
        "tied-seed0": [
            "figures/tied-seed0-decoder.png",
            "figures/tied-seed0-latents.png",
            "figures/tied-seed0-hist.png",
        ],
        "untied-seed0": [
            "figures/untied-seed0-decoder.png",
            "figures/untied-seed0-encoder.png",
            "figures/untied-seed0-latents.png",
        ],
    }
    for names in figures.values():
        for name in names:
            assert_png(tmp_path / name)


# -- markdown ---------------------------------------------------------------------------------


def test_markdown_has_match_and_firing_tables():
    text = render_markdown(make_metrics(), {"tied-seed0": ["figures/tied-seed0-decoder.png"]})
    assert text.startswith("# tiny-world\n\nA tiny world.\n")
    assert "| 0 | 1 | 0.987 | clean |" in text
    assert "| 2 | 3 | 1.000 | clean |" in text
    assert "| {1, 2} | 4.50 | 2.25 | 0.00 |" in text
    assert "| 0 | 1, 2, 3 | none | none | 1, 2, 1 | 0.01230 | 1.25 | 0.975 |" in text
    assert "![tied-seed0-decoder](figures/tied-seed0-decoder.png)" in text
    assert (
        "| 1 | 1 | 0.250 | 4.000 | 4.000 |" in text
    )  # expected-MSE ranking: rank, feature, p, m, p*m^2
    assert "## Claims" not in text  # no claims, no empty table


def test_failing_claim_renders_as_failing_and_gets_detail():
    claims = [
        claim_result(
            id="all-clean",
            text="every latent is clean",
            holds=False,
            seeds_held=2,
            seeds_run=4,
            per_seed=[True, True, False, False],
            detail="seed 2: latent 0 at cos 0.7",
        ),
        claim_result(
            id="no-dead",
            text="no dead latents",
            holds=True,
            seeds_held=4,
            seeds_run=4,
            per_seed=[True] * 4,
            detail="",
        ),
    ]
    text = render_markdown(make_metrics(seeds=4, claims=claims), {})
    assert (
        "| `all-clean` | every latent is clean | 2/4 | no | seed 2: latent 0 at cos 0.7 |" in text
    )
    assert "| `no-dead` | no dead latents | 4/4 | yes |  |" in text
    # Detail for seed 0 and the first failing seed (2), summary rows only for 1 and 3.
    assert "### `tied` seed 0" in text and "### `tied` seed 2" in text
    assert "### `tied` seed 1" not in text and "### `untied` seed 3" not in text
    assert "Seeds 1, 3: summary row only" in text
    page = markdown_to_html(claims_table(claims), Path("."))
    assert '<td class="fails">no</td>' in page and '<td class="holds">yes</td>' in page


def test_claims_table_adds_experiment_column_and_escapes_pipes():
    unrecorded = claim_result(
        id="c", text="a | b", holds=True, seeds_held=0, seeds_run=0, per_seed=[], detail=""
    )
    table = claims_table([unrecorded], ["recap"])
    assert table.splitlines()[0] == "| experiment | claim | text | seeds held | holds | detail |"
    assert table.splitlines()[2] == "| recap | `c` | a \\| b | - | yes |  |"


# -- HTML -------------------------------------------------------------------------------------


def test_markdown_converter_pipe_table():
    page = markdown_to_html(
        "| name | value |\n| --- | ---: |\n| `a\\|b` | **1.5** |\n| c | 2 |", Path(".")
    )
    rows = [row.replace("\n", "") for row in re.findall(r"<tr>(.*?)</tr>", page, re.S)]
    assert rows == [
        "<th>name</th><th>value</th>",
        '<td><code>a|b</code></td><td class="num"><strong>1.5</strong></td>',
        '<td>c</td><td class="num">2</td>',
    ]


def test_markdown_converter_blocks_and_escaping():
    page = markdown_to_html(
        "## Title `x`\n\nline one\nline <two>\n\n- first\n- **second**", Path(".")
    )
    assert page.splitlines() == [
        '<h2 id="top--title-x">Title <code>x</code></h2>',
        "<p>line one",
        "line &lt;two&gt;</p>",  # raw HTML in the markdown is text
        "<ul>",
        "<li>first</li>",
        "<li><strong>second</strong></li>",
        "</ul>",
    ]


def test_headings_get_ids_that_links_reach_and_repeats_stay_apart():
    page = markdown_to_html(
        "# exp-a\n\n## Claims\n\n# exp-b\n\n## Claims\n\nsee [exp-b](#exp-b--claims)", Path(".")
    )
    assert (
        '<h1 id="exp-a">' in page
        and '<h2 id="exp-a--claims">' in page
        and '<h2 id="exp-b--claims">' in page
    )
    assert '<a href="#exp-b--claims">exp-b</a>' in page


def test_html_embeds_figures_and_references_nothing_outside(tmp_path):
    metrics = make_metrics()
    figures = {"tied-seed0": ["figures/one.png"]}
    (tmp_path / "figures").mkdir()
    plots.latent_cos_heatmap(np.eye(2), "tiny", tmp_path / "figures" / "one.png")
    write_html(
        tmp_path / "report.html", "tiny <world>", render_markdown(metrics, figures), tmp_path
    )
    page = (tmp_path / "report.html").read_text()
    assert "<title>tiny &lt;world&gt;</title>" in page
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 1 and sources[0].startswith(
        "data:image/png;base64,iVBORw0KGgo"
    )  # PNG signature
    assert not re.search(r"https?://|<link|<script|url\(", page)


def test_html_flags_missing_figure_and_keeps_sections_apart(tmp_path):
    page = render_html(
        [
            HtmlSection("# one\n\n![gone](figures/gone.png)", tmp_path),
            HtmlSection("# two", tmp_path),
        ]
    )
    assert "[missing figure: figures/gone.png]" in page
    assert page.count("<section>") == 2 and "src=" not in page


@pytest.mark.parametrize("absent", ["description", "wall_seconds", "claims"])
def test_markdown_tolerates_missing_optional_keys(absent):
    metrics = make_metrics()
    setattr(metrics, absent, None)
    text = render_markdown(metrics, {})
    assert "| 0 | 1 | 0.987 | clean |" in text


@pytest.mark.slow
def test_a_metrics_json_from_an_older_version_renders_and_draws(tmp_path):
    older = Metrics.from_json(as_older_version(make_metrics().to_json()))
    text = render_markdown(older, {})
    assert "| 0 | 1 | 0.987 | clean |" in text and "absorption" not in text
    assert (
        "| 1 | 1 | 0.250 | 4.000 |" in text.splitlines()
    )  # no m, no p(1-p)·m² column: the file lacks them
    figures = plots.write_run_figures(
        older,
        {"tied-seed0": np.random.default_rng(0).uniform(0, 5, (200, 3))},
        tmp_path / "figures",
    )
    assert "figures/tied-seed0-hist.png" in figures["tied-seed0"]
    assert_png(tmp_path / "figures" / "world.png")


def test_markdown_lists_absorbed_features_and_hedging_latents_above_the_floor():
    metrics = make_metrics()
    run = metrics.runs[0]  # latent j matches feature j + 1
    run.absorption, run.full_absorption, run.hedging = (
        [0.0, 0.0, 0.75, 0.04],
        [0.0, 0.0, 0.5, 0.0],
        [-0.4, 0.02, 0.0],
    )
    text = render_markdown(metrics, {})
    assert "| 2 | 1 | 0.750 | 0.500 |" in text  # feature 2, its latent 1
    assert "| 0 | 1 | -0.400 |" in text  # latent 0 (feature 1) subtracts its co-occurring features
    assert "| 3 | 2 | 0.040" not in text and "| 1 | 2 | +0.020" not in text  # below 0.05: no row
    run.absorption, run.full_absorption, run.hedging = [0.0] * 4, [0.0] * 4, [0.0] * 3
    assert "No feature absorbed above 0.05" in render_markdown(metrics, {})


def test_show_tables_absorption_only_when_present():
    from broken_latents.output.show import absorption_table

    metrics = make_metrics()
    assert absorption_table(metrics) is None  # a run from before the metrics
    run = metrics.runs[1]
    run.absorption, run.full_absorption, run.hedging = (
        [0.0, 0.9, 0.0, 0.0],
        [0.0, 0.8, 0.0, 0.0],
        [0.3, 0.0, 0.0],
    )
    rows = absorption_table(metrics).columns
    assert [cell for cell in rows[2].cells] == ["f1 (0.90, 0.80)"] and list(rows[3].cells) == [
        "0 (+0.30)"
    ]


def test_show_prints_a_run_without_sae_entries():
    from rich.console import Console

    from broken_latents.output.show import show_run

    console = Console(record=True, width=120)
    show_run(metrics(runs=[], name="empty"), console)
    assert "empty: latents per SAE and seed" in console.export_text()


def test_loss_curves_draw_a_panel_per_term(tmp_path):
    history = {
        "steps": [100, 200],
        "runs": [
            {
                "label": "tied",
                "seed": 0,
                "terms": {"mse": [2.0, 1.0], "l1": [0.1, 0.3], "aux": [None, 0.05]},
            },
            {
                "label": "tied",
                "seed": 1,
                "terms": {"mse": [3.0, 1.5], "l1": [0.2, 0.4], "aux": [None, 0.06]},
            },
        ],
    }
    plots.loss_curves(history, "losses", tmp_path / "loss-curves.png")
    assert assert_png(tmp_path / "loss-curves.png").shape[1] > 3 * 300  # one panel per term


def test_report_ends_with_the_config_behind_it():
    config_toml = 'name = "x"\n\n[[sae]]\nlabel = "u"\nencoder_init = "random"  # <owned>\n'
    text = render_markdown(make_metrics(), {}, config_toml=config_toml)
    assert text.index("## Config") > text.index("## SAE `tied`")
    assert f"```toml\n{config_toml.strip()}\n```" in text
    assert "## Config" not in render_markdown(make_metrics(), {})  # none given: no section
    page = markdown_to_html(text + "\nafter the block\n", Path("."))
    block = re.search(r"<pre><code[^>]*>(.*?)</code></pre>", page, re.S).group(1)
    assert block.splitlines() == [
        "name = &quot;x&quot;",
        "",
        "[[sae]]",
        "label = &quot;u&quot;",
        "encoder_init = &quot;random&quot;  # &lt;owned&gt;",
    ]
    assert "<p>after the block</p>" in page  # the closing fence ends the block


# -- a researcher's first hour: numbers that agree with the verdict, marks, legends, the world ----


def _recording(monkeypatch) -> list:
    """Replace plots._save: keep each figure (open) for the test to read."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    return figures


@pytest.mark.parametrize(
    "value, threshold, shown",
    [
        (0.9477, 0.95, "0.948"),
        (0.9496, 0.95, "0.9496"),
        (0.95, 0.95, "0.95"),
        (0.951, 0.95, "0.95"),
        (0.8996, 0.9, "0.8996"),
        (0.12, 0.95, "0.12"),
        (-0.9477, 0.95, "-0.948"),
        (-0.0004, 0.95, "0.00"),
    ],
)
def test_cosines_print_with_the_digits_of_their_verdict(value, threshold, shown):
    from broken_latents.output.describe import cos_text

    assert cos_text(value, threshold) == shown
    assert (abs(float(shown)) >= threshold) == (abs(value) >= threshold)


def test_a_broken_latent_at_0_9477_never_reads_0_95(monkeypatch):
    """The terminal table, the report's match table and the heatmap all print 0.948 for a broken latent."""
    from rich.console import Console

    from broken_latents.output.show import broken_latent_table

    run = make_run("tied", 0, cos=0.9477, broken=(0,))
    data = metrics([run], world=world_metrics(4), clean_cos=0.95)
    console = Console(width=200, record=True)
    console.print(broken_latent_table(data))
    assert "0 (f1, 0.948)" in console.export_text()
    assert "| 0 | 1 | 0.948 | broken |" in render_markdown(data, {}, shown={0})
    figures = _recording(monkeypatch)
    plots.cos_heatmap(run.decoder_cos, "values", "unused.png")
    assert "0.948" in [t.get_text() for t in figures[0].axes[0].texts]


def test_heatmaps_mark_broken_and_dead_latents_matches_and_parents(monkeypatch):
    run = make_run("tied", 0, cos=0.6, broken=(0,))
    run.dead_latents = [2]
    data = metrics(
        [run], world=world_metrics(4, hierarchy=[{"parent": 1, "children": [2], "mode": "force"}])
    )
    figures = _recording(monkeypatch)
    plots.write_run_figures(data, {}, "unused")
    decoder, latents = figures[1].axes[0], figures[2].axes[0]  # figures[0] is the world profile
    rows = [label.get_text() for label in decoder.get_yticklabels()]
    assert rows == ["0 broken", "1", "2 dead"]
    assert [label.get_text() for label in decoder.get_xticklabels()] == ["0", "1 parent", "2", "3"]
    boxes = {
        (round(p.get_x() + 0.5), round(p.get_y() + 0.5)): p.get_edgecolor() for p in decoder.patches
    }
    assert set(boxes) == {(1, 0), (2, 1), (3, 2)}  # (feature, latent) of each match
    assert boxes[(1, 0)] != boxes[(2, 1)]  # broken and clean in different colours
    assert (
        "broken" in decoder.get_xlabel() and "parent" in decoder.get_xlabel()
    )  # the key says what marks mean
    assert [label.get_text() for label in latents.get_yticklabels()] == ["0 broken", "1", "2 dead"]


def test_histograms_have_one_legend_and_titles_that_fit(monkeypatch):
    figures = _recording(monkeypatch)
    acts = np.random.default_rng(0).uniform(0, 5, (500, 5))
    models = [
        PeakModelRecord.from_json(
            {
                "latent": 1,
                "mixture": [{"mean": 2.0, "std": 0.3, "weight": 1.0}],
                "peaks": 1,
                "peak_means": [2.0],
                "threshold": 2.5,
                "floor": 1.0,
            }
        )
    ]
    plots.activation_histograms(acts, [[4.0]] * 5, "hist", "unused.png", models)
    fig = figures[0]
    (legend,) = fig.legends
    assert [t.get_text().split(" (")[0] for t in legend.get_texts()] == [
        "activations",
        "fitted peak model",
        "peak",
        "threshold between peaks",
    ]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert (
        len(panels) == 5 and fig.get_size_inches()[0] * plots.DPI <= 1150
    )  # 3 per row: the report's width
    for ax in panels:  # each title within its own panel's width: no title runs into the next
        assert (
            ax.title.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width * 1.1
        )


def test_loss_curves_share_one_legend_naming_every_line(monkeypatch):
    figures = _recording(monkeypatch)
    history = {
        "steps": [100, 200],
        "runs": [
            {"label": label, "seed": seed, "terms": {"mse": [2.0, 1.0], "l1": [0.1, 0.3]}}
            for label in ("tied", "untied")
            for seed in (0, 1)
        ],
    }
    plots.loss_curves(history, "losses", "unused.png")
    fig = figures[0]
    assert all(ax.get_legend() is None for ax in fig.axes)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        "tied seed 0",
        "tied seed 1",
        "untied seed 0",
        "untied seed 1",
    ]


def test_report_gives_rates_given_the_parent_and_the_world_line():
    from broken_latents.output.describe import world_line

    world = world_metrics(
        3,
        firing_rates=[0.5, 0.15, 0.2],
        given_rates=[0.5, 0.3, 0.2],
        dim=8,
        magnitudes=[1.0] * 3,
        expected_mse=[0.5, 0.15, 0.2],
        expected_mse_ranking=[0, 2, 1],
        hierarchy=[{"parent": 0, "children": [1], "mode": "conditional"}],
    )
    line = world_line(world)
    assert line.startswith("world: 3 features in 8 dims (orthogonal)") and "\n" not in line
    assert "as given 0.5, 0.3 given f0, 0.2" in line and "marginal 0.5, 0.15, 0.2" in line
    assert "f1 fire only with f0" in line
    text = render_markdown(metrics([make_run("tied", 0)], world=world), {})
    assert line in text and "| 3 | 1 | 0.3 given f0 | 0.150 |" in text


def test_report_lists_sae_that_had_not_converged():
    run = make_run("tied", 3)
    run.loss_drop, run.falling_term, run.still_falling = 0.25, "mse", True
    text = render_markdown(
        metrics([run, make_run("untied", 3)], world=world_metrics(4), samples=1000), {}
    )
    section = text.split("## Convergence")[1].split("##")[0]
    assert (
        "SAE tied seed 3 had not converged: its mse fell by 25%" in section
        and "untied" not in section
    )
    assert "## Convergence" not in render_markdown(
        metrics([make_run("tied", 0)], world=world_metrics(4)), {}
    )
