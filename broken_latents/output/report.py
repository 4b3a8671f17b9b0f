"""report.md from typed metrics (metrics.json), and a self-contained HTML page (figures embedded) from our markdown."""

from __future__ import annotations

import base64
import html
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from markdown_it import MarkdownIt

from ..analysis.convergence import MIN_WINDOW, STILL_FALLING, WINDOW
from ..analysis.metrics import CLEAN_COS, ClaimResult, Metrics, RunMetrics, WorldMetrics
from .describe import cos_text, given_rate_text, world_line

RANKING_ROWS = 10
SHOWN_ABSORPTION = 0.05
"""Absorption and |hedging| above which a feature or latent gets a row in the report (and in `show`)."""


# -- markdown ---------------------------------------------------------------------------------


def render_markdown(
    metrics: Metrics,
    figures: dict[str, list[str]],
    shown: set | None = None,
    config_toml: str | None = None,
) -> str:
    """The run's report: what ran, which claims hold, the world, and per SAE the seeds' results.
    `figures` maps run keys ("LABEL-seedN", "world") to image paths relative to the run directory;
    `shown`: the seeds detailed (default: the first, and the first where a claim failed);
    `config_toml`: the run's config.toml, shown last so a reader sees every setting behind it."""
    runs = metrics.runs
    shown = detail_seeds(runs, metrics.claims or []) if shown is None else shown
    parts = [f"# {metrics.name}", metrics.description or "", _run_facts(metrics)]
    if notes := convergence_notes(metrics):
        parts += [
            "## Convergence",
            "The training loss was still falling at the end for these SAEs, so their "
            "latents may still change with more training:",
            "\n".join(f"- {note}" for note in notes),
        ]
    if metrics.claims:
        parts += ["## Claims", claims_table(metrics.claims)]
    parts += [
        "## World",
        world_line(metrics.world),
        _ranking_table(metrics.world),
        _images(figures.get("world", [])),
    ]
    if figures.get("training"):
        parts += [
            "## Training",
            "Loss terms per logged step, a line per SAE and seed (every value is in "
            "`history.json`):",
            _images(figures["training"]),
        ]
    for label in dict.fromkeys(run.label for run in runs):  # labels in run order, once each
        label_runs = [run for run in runs if run.label == label]
        parts += [f"## SAE `{label}`", _summary_table(label_runs)]
        others = [run.seed for run in label_runs if run.seed not in shown]
        if others:
            parts.append(
                f"Seeds {_join(others)}: summary row only (all numbers are in `metrics.json`)."
            )
        for run in label_runs:
            if run.seed in shown:
                parts += _run_detail(
                    run, figures.get(f"{label}-seed{run.seed}", []), metrics.clean_cos or CLEAN_COS
                )
    if config_toml:
        parts += [
            "## Config",
            "`config.toml` of this run (`broken-latents run DIR/config.toml` reruns it):",
            f"```toml\n{config_toml.strip()}\n```",
        ]
    return "\n\n".join(part for part in parts if part) + "\n"


RECIPE = "--set train.lr=1e-3 --set train.lr_decay=cosine"
"""The registered plain experiments' training recipe (experiments/post.py), suggested to a run that did not converge."""


def convergence_notes(metrics: Metrics) -> list[str]:
    """A sentence per SAE and seed whose loss was still falling (analysis/convergence.py's rule)."""
    return [
        f"SAE {run.label} seed {run.seed} had not converged: its {run.falling_term} fell by {run.loss_drop:.0%} "
        f"of the loss over the last {WINDOW:.0%} of training (at least {MIN_WINDOW} logged steps) against the "
        f"stretch before (the limit is {STILL_FALLING:.0%}). Train on more samples "
        f"(--samples, e.g. {4 * metrics.samples:,}) or use the recipe of the registered plain experiments ({RECIPE})."
        for run in metrics.runs
        if run.still_falling
    ]


def claims_table(claims: Sequence[ClaimResult], experiments: Sequence[str] = ()) -> str:
    """One row per claim; `experiments` (one per claim, for a multi-experiment summary) adds an
    "experiment" column in front."""
    header = (["experiment"] if experiments else []) + [
        "claim",
        "text",
        "seeds held",
        "holds",
        "detail",
    ]
    rows = [
        [
            f"`{claim.id}`",
            claim.text,
            _seeds_held(claim),
            "yes" if claim.holds else "no",
            claim.detail,
        ]
        for claim in claims
    ]
    if experiments:
        rows = [[experiment, *row] for experiment, row in zip(experiments, rows, strict=True)]
    return _table(header, rows)


def _seeds_held(claim: ClaimResult) -> str:
    return (
        f"{claim.seeds_held}/{claim.seeds_run}" if claim.seeds_run else "-"
    )  # no seeds run: not recorded


def detail_seeds(runs: list[RunMetrics], claims: list[ClaimResult]) -> set:
    """The first seed, and the first seed where a claim failed: enough detail to see a success
    and a failure without one page per seed. `per_seed[i]` is the i-th seed in run order."""
    seeds = list(dict.fromkeys(run.seed for run in runs))
    failed = [
        i
        for claim in claims
        for i, held in enumerate(claim.per_seed)
        if not held and i < len(seeds)
    ]
    return set(seeds[:1]) | ({seeds[min(failed)]} if failed else set())


def _run_facts(metrics: Metrics) -> str:
    facts = [f"- samples per SAE: {metrics.samples:,}"]
    if metrics.wall_seconds is not None:
        facts.append(f"- wall time: {metrics.wall_seconds:.1f} s")
    facts.append(f"- throughput: {metrics.samples_per_second:,.0f} samples/s (all SAEs together)")
    return "\n".join(facts)


def _ranking_table(world: WorldMetrics) -> str:
    expected = world.expected_mse
    ranking = world.expected_mse_ranking or sorted(range(len(expected)), key=lambda i: -expected[i])
    columns = {
        "p (marginal)": world.firing_rates,
        "m": world.magnitudes,
        "p·m²": expected,
        "p(1-p)·m²": world.variance,
    }
    columns = {
        name: values for name, values in columns.items() if values
    }  # older runs lack some: None or []
    given = [given_rate_text(world, f) for f in range(len(world.firing_rates))]
    conditional = any("given" in text for text in given)
    rows = [
        [str(rank), str(f)]
        + ([given[f]] if conditional else [])
        + [f"{values[f]:.3f}" for values in columns.values()]
        for rank, f in enumerate(ranking[:RANKING_ROWS], start=1)
    ]
    header = ["rank", "feature", *(["rate as given"] if conditional else []), *columns]
    title = (
        f"Features by expected MSE (p·m², the post's ranking), top {len(rows)}. An SAE's decoder bias takes "
        "the mean of every feature it leaves out, so what a left-out feature really costs is its variance "
        "p(1-p)·m²: where the two rankings differ, SAEs follow the variance. p is the marginal probability "
        "that a feature fires"
        + (
            " (a conditional child's rate as given is its rate given the parent; its "
            "marginal p is that times the parent's)."
            if conditional
            else "."
        )
    )
    return title + "\n\n" + _table(header, rows, right=range(len(header)))


def _summary_table(runs: list[RunMetrics]) -> str:
    header = [
        "seed",
        "learned features",
        "broken latents",
        "dead latents",
        "peaks per latent",
        "MSE",
        "L0",
        "explained variance",
    ]
    rows = [
        [
            str(run.seed),
            _join(run.learned_features),
            _join(run.broken_latents),
            _join(run.dead_latents),
            ", ".join(map(str, run.activation_peaks)) or "-",
            f"{run.mse:#.4g}",
            f"{run.l0:.2f}",
            f"{run.explained_variance:.3f}",
        ]
        for run in runs
    ]
    return _table(header, rows, right=[5, 6, 7])


def _run_detail(run: RunMetrics, images: list[str], clean_cos: float = CLEAN_COS) -> list[str]:
    heading = f"### `{run.label}` seed {run.seed}"
    broken = set(run.broken_latents)
    match_rows = [
        [
            str(m.latent),
            str(m.feature),
            cos_text(m.cos, clean_cos, digits=3),
            "broken" if m.latent in broken else "clean",
        ]
        for m in run.matches
    ] + [[str(j), "-", "-", "dead"] for j in run.dead_latents]
    parts = [
        heading,
        "Latent -> feature (one-to-one, by decoder cosine):",
        _table(["latent", "feature", "cos", "state"], match_rows, right=[2]),
    ]
    patterns = run.firing_patterns
    if patterns:
        latents = range(len(patterns[0].activations))
        rows = [
            ["{" + ", ".join(map(str, p.features)) + "}"] + [f"{a:.2f}" for a in p.activations]
            for p in patterns
        ]
        parts += [
            "Latent activations when exactly these features fire, at their magnitudes:",
            _table(
                ["features"] + [f"latent {j}" for j in latents],
                rows,
                right=range(1, len(latents) + 1),
            ),
        ]
    return parts + _absorption_tables(run) + [_images(images)]


def _absorption_tables(run: RunMetrics) -> list[str]:
    """Features other latents absorb, and latents that hedge: only those above SHOWN_ABSORPTION."""
    if run.absorption is None:  # a run from before these metrics
        return []
    latent_of = {m.feature: m.latent for m in run.matches}
    feature_of = {m.latent: m.feature for m in run.matches}
    absorbed = [i for i, a in enumerate(run.absorption) if a > SHOWN_ABSORPTION]
    hedging = [j for j, h in enumerate(run.hedging) if abs(h) > SHOWN_ABSORPTION]
    parts = []
    if absorbed:
        rows = [
            [
                str(i),
                str(latent_of.get(i, "-")),
                f"{run.absorption[i]:.3f}",
                f"{run.full_absorption[i]:.3f}",
            ]
            for i in absorbed
        ]
        parts += [
            f"Features whose projection other latents carry (absorption > {SHOWN_ABSORPTION}):",
            _table(["feature", "its latent", "absorption", "full absorption"], rows, right=[2, 3]),
        ]
    if hedging:
        rows = [[str(j), str(feature_of.get(j, "-")), f"{run.hedging[j]:+.3f}"] for j in hedging]
        parts += [
            f"Latents whose decoder carries the features co-occurring with their match (|hedging| > "
            f"{SHOWN_ABSORPTION}; negative: it subtracts them):",
            _table(["latent", "its feature", "hedging"], rows, right=[2]),
        ]
    if not parts:
        parts.append(
            f"No feature absorbed above {SHOWN_ABSORPTION}, no latent hedging above {SHOWN_ABSORPTION}."
        )
    return parts


def _images(paths: list[str]) -> str:
    return "\n".join(f"![{Path(p).stem}]({p})" for p in paths)


def _table(header: list[str], rows: list[list[str]], right: Sequence[int] = ()) -> str:
    """A pipe table; `right` are the numeric columns, right-aligned so digits line up."""
    align = ["---:" if i in set(right) else "---" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines)


def _cell(text: str) -> str:
    return (
        str(text).replace("|", "\\|").replace("\n", " ")
    )  # a raw pipe or newline would cut the row


def _join(values) -> str:
    return ", ".join(map(str, values)) or "none"


# -- HTML -------------------------------------------------------------------------------------


class HtmlSection(NamedTuple):
    markdown: str
    base_dir: Path
    """Image paths in the markdown resolve against this (each experiment's run directory)."""


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; line-height: 1.5; color: #222; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; vertical-align: top; }
th { background: #f0f0f0; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.holds { background: #d8f5d8 !important; color: #155215; font-weight: bold; }
td.fails { background: #fadbd8 !important; color: #8a1c12; font-weight: bold; }
img { max-width: 100%; display: block; margin: .5em 0; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
pre { background: #f3f3f3; padding: .6em; border-radius: 3px; overflow-x: auto; }
pre code { padding: 0; }
.missing { color: #8a1c12; }
"""


PAGE = string.Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>$title</title>
<style>$css</style>
</head>
<body>
$body
</body>
</html>
""")
"""One page, no external references: figures are embedded (see `_image`), the style is inline."""


def render_html(sections: Sequence[HtmlSection], title: str = "broken-latents report") -> str:
    """One page, no external references: figures are embedded as base64 data URIs."""
    body = "\n".join(
        f"<section>\n{markdown_to_html(s.markdown, Path(s.base_dir))}</section>" for s in sections
    )
    return PAGE.substitute(title=html.escape(title), css=CSS, body=body)


def write_html(path: str | Path, title: str, markdown_text: str, base_dir: str | Path) -> None:
    Path(path).write_text(
        render_html([HtmlSection(markdown_text, Path(base_dir))], title), encoding="utf-8"
    )


def markdown_to_html(text: str, base_dir: Path) -> str:
    """CommonMark with pipe tables (markdown-it-py), raw HTML escaped, and what our pages add:
    headings get ids that `[text](#id)` links reach, right-aligned columns are numbers, the
    `holds` column is coloured, and images are embedded from `base_dir`."""
    tokens = _MARKDOWN.parse(text)
    _heading_ids(tokens)
    _table_classes(tokens)
    return _MARKDOWN.renderer.render(tokens, _MARKDOWN.options, {"base_dir": Path(base_dir)})


def _heading_ids(tokens: list) -> None:
    """Sections repeat headings ("Claims" in every experiment): an h1 names its part of the page,
    and the headings under it get ids "H1--HEADING"."""
    page_section = "top"
    for token, content in zip(tokens, tokens[1:]):
        if token.type != "heading_open":
            continue
        name = anchor(content.content)
        if token.tag == "h1":
            page_section = name
        token.attrSet("id", page_section if token.tag == "h1" else f"{page_section}--{name}")


def _table_classes(tokens: list) -> None:
    """Right-aligned cells are numbers (class num); a `holds` column's yes/no cells are coloured."""
    holds_column, column = -1, 0
    for i, token in enumerate(tokens):
        if token.type == "table_open":
            holds_column = -1
        elif token.type == "tr_open":
            column = 0
        elif token.type in ("th_open", "td_open"):
            content = tokens[i + 1].content
            classes = (
                ["num"]
                if token.type == "td_open" and "text-align:right" in str(token.attrGet("style"))
                else []
            )
            if token.type == "th_open" and content == "holds":
                holds_column = column
            if token.type == "td_open" and column == holds_column and content in ("yes", "no"):
                classes.append(
                    "holds" if content == "yes" else "fails"
                )  # a failing claim must catch the eye
            token.attrs.pop("style", None)
            if classes:
                token.attrSet("class", " ".join(classes))
            column += 1


def anchor(text: str) -> str:
    """The id a heading gets on the page, and what `[text](#id)` links use: lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", re.sub(r"`", "", text).lower()).strip("-")


def _image(renderer, tokens: list, idx: int, options, env: dict) -> str:
    """An image embedded as a data URI, or a visible note when its file is missing (never a link outside the page)."""
    token = tokens[idx]
    src, alt = token.attrGet("src"), renderer.renderInlineAsText(token.children or [], options, env)
    path = env["base_dir"] / src
    if not path.is_file():
        return f'<span class="missing">[missing figure: {html.escape(src)}]</span>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


_MARKDOWN = MarkdownIt("commonmark", {"html": False}).enable("table")
_MARKDOWN.add_render_rule("image", _image)
