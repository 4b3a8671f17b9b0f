"""The README and the docs pages say what the repository holds: the ten-line world in the README is
examples/ten-lines.toml and loads, every relative link points at a file that exists, and no page
sends a reader outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def test_readme_is_short():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_ten_line_world_is_the_example_and_loads():
    import broken_latents as bl

    blocks = re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)
    ten = next(b for b in blocks if 'name = "ten-lines"' in b)
    assert len(ten.strip().splitlines()) <= 10
    example = ROOT / "examples" / "ten-lines.toml"
    assert ten.strip() == example.read_text().strip()
    config = bl.load_config(example)
    assert [(s.label, s.architecture, s.latents) for s in config.sae] == [
        ("tied", "tied", 3),
        ("untied", "untied", 3),
    ]
    assert config.world.features == 4 and config.world.hierarchy[0].children == [1, 2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"
        assert ROOT in path.parents, (
            f"{page.relative_to(ROOT)} links outside the repository: {target}"
        )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_pointers_outside_the_repository(page):
    text = page.read_text()
    assert "DESIGN.md" not in text
    assert not re.search(r"\bissues? #?\d+", text, re.I), "pages name no issue numbers"
