"""The README and the documentation pages, read as a user reads them: short README with the set-up commands and a
citation, figures that are the measurement's, commands and paths that exist, samplers taught as components.

The strict MkDocs build (.ci/run) checks the site's links and API references; these tests check what it cannot.
"""

from __future__ import annotations

import json
import re
import textwrap
import tomllib
from pathlib import Path

import pytest
import yaml

from pds_lightning.cli import ALIASES, EXTRA_COMMANDS
from pds_lightning.data.settings import OLD_DATA_KEYS

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TRAINER_COMMANDS = {"fit", "validate", "test", "predict"}
# Configs that a command on the same page writes first (configs write demo; convert-diffusers), and the
# placeholder of the multi-node page.
WRITTEN_CONFIGS = {"demo.yaml", "ffhq256.yaml", "C"}
# Pages whose text other work owns and that still name the flat sampler keys of older checkpoints on purpose
# (design.md's notes on legacy translation); everything a user is taught from is checked.
FLAT_KEYS_EXEMPT = {"design.md"}


def pages() -> list[Path]:
    return [README] + sorted((ROOT / "docs").rglob("*.md"))


def code_of(text: str) -> str:
    """Fenced blocks, indented (4-space) blocks and inline code spans of a Markdown text, one per line."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    outside = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    indented = [m for m in re.findall(r"^(?: {4}|\t)(.*)$", outside, flags=re.M)]
    spans = re.findall(r"`([^`\n]+)`", outside)
    return "\n".join(fenced + indented + spans)


def commands_of(text: str) -> list[str]:
    """Each shell command of the code blocks, continuation lines (trailing backslash) joined."""
    joined = re.sub(r"\\\n\s*", " ", code_of(text))
    return [line.strip() for line in joined.splitlines() if "pds-lightning " in line or "python -m " in line]


def test_readme_is_short_and_has_the_set_up_commands_and_a_citation():
    text = README.read_text()
    assert 150 <= len(text.splitlines()) <= 200, len(text.splitlines())
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == ["Set up and run", "Sample in Python", "Samplers", "Which sampler", "Commands",
                        "Documentation", "Licence", "Citation"]
    # The main job and the tests, exactly as .ci/run runs the latter.
    assert "    bash .ci/setup && .venv/bin/pds-lightning fit --config configs/demo.yaml\n" in text
    assert "    bash .ci/setup && .venv/bin/python -m pytest -q\n" in text
    assert ".venv/bin/python -m pytest -q\n" in (ROOT / ".ci" / "run").read_text()
    assert "    .venv/bin/python -m pytest -q -m \"not slow\"\n" in text
    assert "python -m mkdocs build --strict" in text
    assert "@inproceedings{ma2022pds" in text and "@article{ma2025pds" in text and "@software{pds_lightning" in text


def test_citation_cff_cites_this_version_and_the_pds_papers():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "MIT"
    assert str(cff["version"]) == version
    titles = [(r["type"], r["title"], r["year"]) for r in cff["references"]]
    assert titles == [("conference-paper", "Accelerating Score-Based Generative Models with Preconditioned Diffusion "
                                           "Sampling", 2022),
                      ("article", "Preconditioned Score-Based Generative Models", 2025)]
    assert [a["family-names"] for a in cff["references"][0]["authors"]] == ["Ma", "Zhang", "Zhu", "Feng"]
    assert f"version = {{{version}}}" in README.read_text()


def test_readme_results_tables_are_the_recipes_measurement():
    """Every cell of the README's tables equals the row of benchmarks/results/recipes/samplers_vs_nfe.json it names."""
    rows = json.loads((ROOT / "benchmarks/results/recipes/samplers_vs_nfe.json").read_text())["results"]
    tables = re.findall(r"^\| NFE \|.*\n(?:^\|.*\n)+", README.read_text(), flags=re.M)
    assert len(tables) == 2  # the digits pair, the photo-patches pair
    for table in tables:
        header, _, *body = table.splitlines()
        columns = [re.fullmatch(r"(\w+) `(\w+)`", c.strip()).groups() for c in header.strip("|").split("|")[1:]]
        assert [int(l.split("|")[1]) for l in body] == [10, 20, 40, 80]
        for line in body:
            budget, *cells = [c.strip() for c in line.strip("|").split("|")]
            for (model, sampler), cell in zip(columns, cells, strict=True):
                row = next(r for r in rows if (r["model"], r["sampler"], r["budget"]) == (model, sampler, int(budget)))
                assert cell == f"{row['spectral_error']:.3f} / {row['fd_digits']:.0f}", (model, sampler, budget)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_name_real_commands_configs_and_benchmarks(page):
    known = TRAINER_COMMANDS | set(ALIASES) | set(EXTRA_COMMANDS)
    for command in commands_of(page.read_text()):
        for sub in re.findall(r"pds-lightning (\S+)", command):
            assert sub in known or sub in ("COMMAND", "...") or sub.startswith("-"), (page.name, command)
        for config in re.findall(r"--config (\S+)", command):
            # a config file, a shipped name, or a file an earlier command on the page writes (`C`: a placeholder)
            assert (config in WRITTEN_CONFIGS or (ROOT / config).is_file()
                    or any((ROOT / "configs" / sub / f"{config}.yaml").is_file() for sub in ("", "score_sde"))), \
                (page.name, command)
        for module in re.findall(r"python -m (benchmarks\.\w+)", command):
            assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), (page.name, command)


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_repository_paths_named_in_the_text_exist(page):
    text = page.read_text()
    named = re.findall(r"`((?:benchmarks|configs|tests|pds_lightning|docs|data)/[^`\s]*)`", text)
    for path in named:
        if "/my_" in path:
            continue  # an example of a file to create (design.md: how to add a sampler)
        # from the repository root, or from the package (design.md's `data/sources.py`)
        assert list(ROOT.glob(path.rstrip("/"))) or list((ROOT / "pds_lightning").glob(path.rstrip("/"))), \
            (page.name, path)


@pytest.mark.parametrize("page", [p for p in pages() if p.name not in FLAT_KEYS_EXEMPT],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_samplers_are_taught_as_components_not_flat_keys(page):
    code = code_of(page.read_text())
    flat = re.findall(r"\b(?:preconditioner|method|auto_method|pds_predictor|ode_corrector|n_corrector_steps)\s*:"
                      r"|^\s*n_steps\s*:|--model\.sampler\.(?:n_steps|preconditioner|method|alpha|snr|predictor "
                      r"\w+)\b", code, flags=re.M)
    assert not flat, (page.name, flat)


def flat_data_keys(text: str) -> list[str]:
    """The old flat data keys (`OLD_DATA_KEYS`) a text names: as options or dotted keys (`--data.seeds`,
    `data.image_size`), or as keys of a YAML `data:` mapping (block or flow style)."""
    keys = "|".join(OLD_DATA_KEYS)
    found = re.findall(rf"(?<![\w./])(?:--)?data\.(?:{keys})\b(?!\.py|\.seed_values)", text)
    for block in re.findall(r"^(\s*)data:[ \t]*(\{.*\}|#.*)?\n?((?:\1[ \t]+\S.*\n?|[ \t]*\n)*)", text, flags=re.M):
        indent, flow, body = block
        section = yaml.safe_load(flow if flow.startswith("{") else textwrap.dedent(body) or "{}")
        found += [f"data: {{{key}: ...}}" for key in (section if isinstance(section, dict) else {})
                  if key in OLD_DATA_KEYS]
    return found


@pytest.mark.parametrize("page", pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_data_is_taught_in_groups_not_flat_keys(page):
    """Issue 32: the pages teach `data.images.size`, `--data.predict.seeds`, ... only (old keys still load)."""
    assert not flat_data_keys(code_of(page.read_text())), page.name


@pytest.mark.parametrize("config", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_and_their_header_commands_use_grouped_data_keys(config):
    assert not flat_data_keys(config.read_text()), config.name


def test_the_flat_data_check_finds_every_spelling():
    """The check above can fail: each spelling of an old key is found, the grouped ones are not."""
    text = ("pds-lightning predict --data.seeds 0-9 --data.predict.seeds 0-9\n`data.image_size`\n"
            "data:\n  source: mnist\n  val_size: 8\n  split: {val_size: 8}\nmodel: {}\n"
            "data: {stats_num_images: 4, stats: {num_images: 4}}\n`pds_lightning.data.seeds`\n")
    assert flat_data_keys(text) == ["--data.seeds", "data.image_size", "data: {val_size: ...}",
                                    "data: {stats_num_images: ...}"]
