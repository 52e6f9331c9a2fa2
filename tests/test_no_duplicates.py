"""No block of six or more lines is written twice across the Python tree (custom/, scripts/, bundle/, tests/): shared
logic lives in one place. Lines are compared stripped of indentation; blank lines, comments, imports and lines of
brackets alone are left out, so only code and text count."""

import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WINDOW = 6
TRIVIAL = re.compile(r"^(#.*|import .*|from \S+ import .*|[\[\](){},:]*|\"\"\"|pass|return|else:|try:|finally:)$")


def significant_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that count."""
    lines = [(n, line.strip()) for n, line in enumerate(path.read_text().splitlines(), 1)]
    return [(n, text) for n, text in lines if not TRIVIAL.match(text)]


def repeated_blocks(files: list[Path], root: Path = ROOT, window: int = WINDOW) -> list[tuple[str, str]]:
    """Pairs of places ("file:line", relative to `root`) whose `window` significant lines are identical."""
    seen: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for path in files:
        lines = significant_lines(path)
        for i in range(len(lines) - window + 1):
            block = tuple(text for _, text in lines[i:i + window])
            seen[block].append(f"{path.relative_to(root)}:{lines[i][0]}")
    return [(places[0], places[1]) for places in seen.values() if len(places) > 1]


def test_no_block_of_six_lines_is_repeated():
    files = sorted(p for folder in ("custom", "scripts", "bundle", "tests") for p in (ROOT / folder).rglob("*.py"))
    pairs = repeated_blocks(files)
    assert not pairs, "repeated blocks (move them into one function):\n" + "\n".join(f"{a} ~ {b}" for a, b in pairs[:20])


def test_a_copied_block_is_found(tmp_path):
    code = "\n".join(f"value_{i} = compute({i}, scale={i * 2})" for i in range(7))
    (tmp_path / "a.py").write_text(code)
    (tmp_path / "b.py").write_text("header = 1\n" + code)
    assert repeated_blocks([tmp_path / "a.py", tmp_path / "b.py"], tmp_path) == [("a.py:1", "b.py:2"), ("a.py:2", "b.py:3")]
