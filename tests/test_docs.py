"""The documentation runs: every ```python block in the user docs is executed as a program, and
every signature docs/api.md shows is the one the code has.

Each block runs in a fresh namespace (``__name__ == "__main__"``, like a script) in its own
temporary working directory, so files it writes land there. A block whose first line is a
comment containing ``fragment`` is an excerpt, not a program, and is skipped; use that
sparingly. A failing block is a failed test named after its file and line.

docs/semantics.md (generated from semantics/modes.md) is not run: its blocks are excerpts
that name ``"cuda"`` and variables defined elsewhere, to be read beside the measurements.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path

import pytest

import modelsync as ms
from modelsync import layers, losses, optim, tree

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = ["README.md", "docs/guide.md", "docs/api.md", "docs/concepts.md"]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(relative: str) -> list[tuple[int, str]]:
    """(line number of the opening fence, code) for every ```python block in the file."""
    text = (ROOT / relative).read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def is_fragment(code: str) -> bool:
    first = code.lstrip("\n").split("\n", 1)[0].strip()
    return first.startswith("#") and "fragment" in first.lower()


def _cases() -> list:
    cases = []
    for relative in DOC_FILES:
        for line, code in python_blocks(relative):
            if not is_fragment(code):  # a fragment is an excerpt, not a program: not run
                cases.append(pytest.param(relative, line, code, id=f"{relative}:{line}"))
    return cases


@contextlib.contextmanager
def _layer_registry_restored():
    """Blocks register example layers (@ms.layer); forget them afterwards so they cannot
    collide with layers other tests register."""
    registry, types = dict(tree._REGISTRY), set(tree.LAYER_TYPES)
    try:
        yield
    finally:
        tree._REGISTRY.clear()
        tree._REGISTRY.update(registry)
        tree.LAYER_TYPES.clear()
        tree.LAYER_TYPES.update(types)


@pytest.mark.parametrize(("relative", "line", "code"), _cases())
def test_doc_block_runs(relative, line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    compiled = compile(code, f"{relative}:{line}", "exec")
    namespace = {"__name__": "__main__"}
    with _layer_registry_restored(), contextlib.redirect_stdout(io.StringIO()):
        try:
            exec(compiled, namespace)
        except Exception as exc:
            where = _doc_line(exc, compiled.co_filename, line)
            pytest.fail(f"the ```python block at {relative}:{line} raised at {relative}:{where}: "
                        f"{type(exc).__name__}: {exc}")


def _doc_line(exc: BaseException, filename: str, fence_line: int) -> int:
    """The line of the doc file where the block raised (its innermost frame in the block)."""
    found = fence_line
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            found = fence_line + tb.tb_lineno
        tb = tb.tb_next
    return found


def test_docs_have_blocks():
    """Guard against the extraction silently finding nothing (a changed fence style)."""
    assert python_blocks("README.md")
    assert len(python_blocks("docs/guide.md")) >= 10
    assert python_blocks("docs/api.md")


# -- docs/api.md: every public name, with the signature the code has ------------------------
API = ROOT / "docs" / "api.md"
MODULES = {"ms": ms, "layers": layers, "optim": optim, "losses": losses}
#: A signature line: a code span alone on its line, "module.name(...)..." or
#: "module.Class.method(...)...".
SIGNATURE = re.compile(r"^`((?:ms|layers|optim|losses)\.[\w.]+)(\([^`\n]*)`[ \t]*$", re.M)


class _Text:
    """An annotation shown as written in the source (they are strings under
    ``from __future__ import annotations``), without the quotes inspect adds."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _plain(annotation):
    if annotation is inspect.Parameter.empty:
        return annotation
    return _Text(annotation if isinstance(annotation, str) else inspect.formatannotation(
        annotation))


def signature_text(obj, *, drop_self: bool = False) -> str:
    """The signature as the code declares it, e.g. ``(model: Any, *, mode: str = 'copy') -> Any``
    (a class shows its constructor's parameters, without ``__init__``'s ``-> None``)."""
    sig = inspect.signature(obj)
    parameters = [p.replace(annotation=_plain(p.annotation)) for p in sig.parameters.values()]
    if drop_self and parameters and parameters[0].name == "self":
        parameters = parameters[1:]
    returns = inspect.Signature.empty if inspect.isclass(obj) else _plain(sig.return_annotation)
    return str(sig.replace(parameters=parameters, return_annotation=returns))


def resolve(dotted: str):
    """The object a documented name refers to, and whether it is a method of a class."""
    head, *rest = dotted.split(".")
    obj, owner = MODULES[head], None
    for part in rest:
        owner, obj = obj, getattr(obj, part)
    return obj, inspect.isclass(owner)


def documented_signatures() -> list[tuple[str, str]]:
    return SIGNATURE.findall(API.read_text(encoding="utf-8"))


@pytest.mark.parametrize(("name", "shown"), documented_signatures())
def test_api_signature_is_the_code(name, shown):
    obj, is_method = resolve(name)
    if isinstance(obj, property):
        pytest.fail(f"{name} is a property; document it without parentheses")
    assert shown == signature_text(obj, drop_self=is_method), (
        f"docs/api.md shows {name}{shown}; the code says {name}"
        f"{signature_text(obj, drop_self=is_method)}")


def test_api_documents_every_public_name():
    text = API.read_text(encoding="utf-8")
    exported = {"ms": ms.__all__, "layers": layers.__all__, "optim": optim.__all__,
                "losses": ["mse", "cross_entropy", "binary_cross_entropy", "Loss"]}
    missing = [f"{prefix}.{name}" for prefix, names in exported.items() for name in names
               if f"`{prefix}.{name}" not in text]
    assert not missing, f"docs/api.md does not document {missing}"


def test_api_signature_lines_are_found():
    assert len(documented_signatures()) >= 60
