"""DESIGN.md's layers, read off the imports of every module (lazy imports inside functions included): commands ->
frameworks -> inference -> core, a lower layer never importing a higher one, and no module importing a command's
``__main__``."""

import ast
from pathlib import Path

import pytest

import echovl

PACKAGE = Path(echovl.__file__).parent
COMMANDS = ("eval", "analysis", "data", "demo", "experiments", "train", "cli")  # outputs.py: a core utility
FRAMEWORKS = ("easyr1", "trl")
LAYERS = {
    "core": {"inference", *FRAMEWORKS, *COMMANDS},  # what each layer may not import
    "inference": {*FRAMEWORKS, *COMMANDS},
    "frameworks": set(COMMANDS) - {"train"},
}


def _layer(path: Path) -> str | None:
    top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    if top in COMMANDS or top == "testing":
        return None  # the top layer (and the test models' builder) may import anything below
    if top in FRAMEWORKS:
        return "frameworks"
    return "inference" if top == "inference" else "core"


def _imported(path: Path, root: Path = PACKAGE) -> list[str]:
    """The ``echovl`` modules ``path`` (a module under ``root``) imports, as dotted names below ``echovl``
    (``eval.__main__``, ``clip``)."""
    package = list(path.relative_to(root).parent.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            found.append(".".join([*base, *(node.module.split(".") if node.module else [])]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("echovl."):
            found.append(node.module.removeprefix("echovl."))
        elif isinstance(node, ast.Import):
            found += [a.name.removeprefix("echovl.") for a in node.names if a.name.startswith("echovl.")]
    return [name for name in found if name]


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer_or_a_commands_main(path):
    layer = _layer(path)
    imported = _imported(path)
    assert [name for name in imported if name.endswith("__main__")] == []
    if layer is not None:
        assert [name for name in imported if name.split(".")[0] in LAYERS[layer]] == []


def test_the_checker_sees_relative_and_absolute_imports(tmp_path):
    """The parser behind the test above, on a module written for it (the check must be able to fail)."""
    path = PACKAGE / "inference" / "loading.py"
    assert "steps" in _imported(path)  # from ..steps import ...
    assert _layer(path) == "inference" and _layer(PACKAGE / "clip.py") == "core"
    assert _layer(PACKAGE / "easyr1" / "actor.py") == "frameworks" and _layer(PACKAGE / "eval" / "run.py") is None
    probe = tmp_path / "inference" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("from ..eval import run\nimport echovl.demo.live\nfrom ..eval.__main__ import main\nimport os\n")
    assert _imported(probe, root=tmp_path) == ["eval", "demo.live", "eval.__main__"]
