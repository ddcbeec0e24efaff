"""The docs stand on their own: every relative link resolves (file and heading), and
docs/architecture.md lists exactly the modules in the tree."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "benchmarks").glob("*.md"))]


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    out, seen = set(), {}
    for line in page.read_text(encoding="utf-8").splitlines():
        if m := re.match(r"#+\s+(.*)", line):
            slug = _slug(m.group(1))
            n = seen[slug] = seen.get(slug, -1) + 1
            out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    broken = []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        path, _, fragment = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif fragment and target.suffix == ".md" and fragment not in _anchors(target):
            broken.append(f"{link}: no such heading")
    assert not broken, broken


def test_architecture_lists_every_module():
    block = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8").split("```")[1]
    listed, stack = set(), []
    for line in block.splitlines():
        m = re.match(r"( *)(\S+)", line)
        if not m or (m.group(1) and not line[:25].strip()):  # blank, or a description's continuation
            continue
        indent, name = len(m.group(1)), m.group(2)
        stack = [(i, n) for i, n in stack if i < indent]
        if name.endswith("/"):
            stack.append((indent, name.rstrip("/")))
            continue
        for n in ([n.strip(",") for n in line[:27].split()] if "," in line[:27] else [name]):
            if n.endswith(".py"):
                listed.add("/".join([d for _, d in stack] + [n]))
    tree = {str(p.relative_to(ROOT)) for d in ("flowctl", "adapters") for p in (ROOT / d).rglob("*.py")}
    tree = {t for t in tree if not t.endswith("__init__.py") or t == "flowctl/__init__.py"}
    assert not tree - listed, f"modules missing from docs/architecture.md: {sorted(tree - listed)}"
    assert not listed - tree, f"docs/architecture.md lists modules that do not exist: {sorted(listed - tree)}"
