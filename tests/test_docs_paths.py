"""The docs name no path of the machine that wrote them, their relative links resolve, and the generators' commands are
relative to the repository (``scripts/doc_command.py``)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from scripts.doc_command import REPO_ROOT, relative_command, relative_path, relative_word

MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|root|home|tmp)/")  # /home/x, not ../x/home/ nor https://h/home/
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def pages() -> list[Path]:
    """README.md, models/README.md and every Markdown file under docs/, recursively (generated study folders too)."""
    return [REPO_ROOT / "README.md", REPO_ROOT / "models" / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def prose_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    lines, fenced = [], False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line))
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, code and link markup dropped, punctuation but ``-`` and ``_`` removed,
    spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def anchors(path: Path) -> set[str]:
    """The anchors GitHub makes for ``path``'s headings (a repeated heading's anchor gets ``-1``, ``-2``, ...)."""
    names: set[str] = set()
    for _, line in prose_lines(path):
        match = HEADING.match(line)
        if match:
            base, suffix = slug(match.group(2)), 0
            while (f"{base}-{suffix}" if suffix else base) in names:
                suffix += 1
            names.add(f"{base}-{suffix}" if suffix else base)
    return names


def test_no_doc_names_a_path_of_the_machine_that_wrote_it():
    found = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()[:160]}"
        for path in pages()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if MACHINE_PATH.search(line)
    ]
    assert not found, "absolute machine paths in the docs (write them relative to the repository):\n" + "\n".join(found)


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of each Markdown link and image outside fenced code (link text may span lines)."""
    lines = dict(prose_lines(path))
    text = "\n".join(lines.get(n, "") for n in range(1, max(lines, default=0) + 1))
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in LINK.finditer(text)]


def test_every_relative_link_of_the_docs_resolves_to_a_file_and_its_anchor():
    broken = []
    for path in pages():
        for number, target in links(path):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto:, file:
                continue
            file_part, _, anchor = target.partition("#")
            resolved = (path.parent / file_part).resolve() if file_part else path
            where = f"{path.relative_to(REPO_ROOT)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor.lower() not in anchors(resolved):
                broken.append(f"{where} (no such heading)")
    assert not broken, "broken relative links:\n" + "\n".join(broken)


def test_slug_follows_github():
    assert slug("0.8.0: two centres, the photometric recipe") == "080-two-centres-the-photometric-recipe"
    assert slug("top_k and λ from the converged checkpoint") == "top_k-and-λ-from-the-converged-checkpoint"
    assert slug("What the reference design claims, and what holds") == "what-the-reference-design-claims-and-what-holds"
    assert slug("Closing the light encoder's gap: `ckpt_paths`") == "closing-the-light-encoders-gap-ckpt_paths"


@pytest.mark.parametrize(
    "word, expected",
    [
        ("/srv/repo/docs/results/x", "docs/results/x"),
        ("/srv/shared/data/kvasir-seg", "../shared/data/kvasir-seg"),
        ("/srv/repo", "."),
        ("name=/srv/runs/qc/metrics.csv", "name=../runs/qc/metrics.csv"),
        ("--output=/srv/repo/docs/a.md", "--output=docs/a.md"),
        ("['/srv/repo/a.pt','/srv/runs/b.pt']", "['a.pt','../runs/b.pt']"),
        ("../shared/data/kvasir-seg", "../shared/data/kvasir-seg"),  # already relative: as given
        ("docs/results/x", "docs/results/x"),
        ("recipe-baseline,recipe-photometric", "recipe-baseline,recipe-photometric"),
        ("128", "128"),
        ("https://host/work/models", "https://host/work/models"),
    ],
)
def test_relative_word_rewrites_only_absolute_paths(word, expected):
    assert relative_word(word, "/srv/repo") == expected


def test_relative_path_keeps_a_relative_path_and_rebases_an_absolute_one():
    assert relative_path("runs/x", "/srv/repo") == "runs/x"
    assert relative_path(Path("/srv/repo/models/model.pt"), "/srv/repo") == "models/model.pt"
    assert relative_path(REPO_ROOT / "docs" / "quality.md") == "docs/quality.md"


def test_relative_command_is_a_shell_line_without_machine_paths():
    argv = ["--dataset_dir", "/srv/shared/data/kvasir-seg", "--output", "/srv/repo/docs/results/x", "--rows", "a b"]
    command = relative_command(["python", "scripts/compare_models.py"], argv, "/srv/repo")
    assert command == (
        "python scripts/compare_models.py --dataset_dir ../shared/data/kvasir-seg --output docs/results/x "
        "--rows 'a b'"
    )
    assert shlex.split(command)[2:] == ["--dataset_dir", "../shared/data/kvasir-seg", "--output", "docs/results/x"] + [
        "--rows",
        "a b",
    ]
    machine = str(REPO_ROOT / "docs" / "quality.md")
    assert relative_command(["python", "scripts/quality_study.py"], ["--docs", machine]) == (
        "python scripts/quality_study.py --docs docs/quality.md"
    )
    assert not MACHINE_PATH.search(relative_command(["python", "x.py"], ["/work/runs/a", "k=/home/u/b", "/tmp/c"]))
