"""The codec package's shape: hooks declared on the base class, runtime modules
apart from fitting, and no caller probing codecs with getattr."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hilbed.nodes.codecs import CODECS, LAZY_CODECS, Codec, Encoded, codec_class, make_codec

ROOT = Path(__file__).resolve().parents[3]
CODECS_DIR = ROOT / "nodes" / "codecs"
#: optional hooks with a default on Codec, and what the default does
HOOKS = ("prepare", "set_stream", "feedback", "decode_features", "predict_features", "decode_extra",
         "adapt_model", "summary")
FLAGS = {"split_computing": False, "learns_from_feedback": False, "input_size": None}
#: modules a client or edge imports: the codec families and what they share, and the networks
RUNTIME = sorted(p for p in CODECS_DIR.glob("*.py")) + sorted((CODECS_DIR / "nets").glob("*.py"))


def _all_codec_classes() -> list[type[Codec]]:
    return [codec_class(n) for n in sorted(set(CODECS) | set(LAZY_CODECS))]


# ------------------------------------------------------------------ hooks ---

@pytest.mark.parametrize("hook", HOOKS)
def test_base_class_declares_each_hook_with_a_docstring(hook):
    member = inspect.getattr_static(Codec, hook)
    assert hook in Codec.__dict__, f"Codec.{hook} is not declared on the base class"
    fn = member.__func__ if isinstance(member, classmethod) else member
    assert (fn.__doc__ or "").strip(), f"Codec.{hook} has no docstring"


def test_base_class_declares_the_flags_callers_test():
    for flag, default in FLAGS.items():
        assert flag in Codec.__dict__ and getattr(Codec, flag) is default
    assert "client_requires" not in Codec.__dict__ and "fit" not in Codec.__dict__


class _Plain(Codec):
    """A codec that overrides nothing but encode/decode."""

    name = "plain-test"

    def encode(self, image: np.ndarray) -> Encoded:
        return Encoded([image.tobytes()])

    def decode(self, chunks: list[bytes], total_chunks: int) -> np.ndarray | None:
        return None


def test_a_codec_without_overrides_gets_no_op_hooks():
    c = _Plain()
    img = np.zeros((8, 8, 3), np.uint8)
    enc = c.encode(img)
    before = dict(c.__dict__)
    assert _Plain.prepare({}) is None
    assert c.set_stream(deadline_ms=100.0, period_ms=50.0) is None
    assert c.feedback(img, enc, {"decoded": True, "top5": [1]}, 1) is None
    assert c.decode_extra(enc.chunks, 1) == []
    model = object()
    assert c.adapt_model(model) is model
    assert c.summary() is None
    assert c.__dict__ == before  # none of them changed the codec
    assert not c.split_computing and not c.learns_from_feedback and c.input_size is None
    with pytest.raises(NotImplementedError):  # only called when split_computing is set
        c.decode_features(enc.chunks, 1)
    with pytest.raises(NotImplementedError):
        c.predict_features(None)


def test_classic_codecs_are_plain():
    c = make_codec("jpeg", {"quality": 50})
    img = np.full((16, 16, 3), 128, np.uint8)
    e = c.encode(img)
    assert not c.split_computing and not c.learns_from_feedback
    assert c.decode_extra(e.chunks, len(e.chunks)) == [] and c.summary() is None


@pytest.mark.parametrize("cls", _all_codec_classes(), ids=lambda c: c.name)
def test_flags_match_the_hooks_a_codec_overrides(cls):
    """A flag without its hook (or the reverse) would make the client or edge skip or misuse a codec."""
    def overrides(name):
        return any(name in k.__dict__ for k in cls.__mro__[:cls.__mro__.index(Codec)])
    assert overrides("decode_features") == overrides("predict_features")
    # PNC decides per artifact (one carrying a fine-tuned classifier): the instance sets the flag in __init__
    per_instance = overrides("__init__") and "self.split_computing =" in inspect.getsource(cls.__init__)
    assert cls.split_computing == overrides("decode_features") or (overrides("decode_features") and per_instance)
    assert cls.learns_from_feedback == overrides("feedback")


def test_the_families_that_use_hooks_declare_them():
    assert codec_class("entropic").split_computing and codec_class("crbq").split_computing
    assert not codec_class("factorized").split_computing  # decodes to pixels for the edge's model
    # pnc: split computing only for an artifact with a fine-tuned classifier (set on the instance)
    assert not codec_class("pnc").split_computing and "decode_features" in codec_class("pnc").__dict__
    assert codec_class("adacompress").learns_from_feedback and codec_class("autojpeg").learns_from_feedback
    assert "decode_extra" in codec_class("adacompress").__dict__
    assert "set_stream" in codec_class("autojpeg").__dict__


# ---------------------------------------------------------------- layout ---

def _module_level_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of every import outside functions and classes (``if``/``try`` blocks included)."""
    out: list[tuple[int, str]] = []

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                out.extend((node.lineno, a.name) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                out.append((node.lineno, base))
                out.extend((node.lineno, f"{base}.{a.name}" if base else a.name) for a in node.names)
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [])
            elif isinstance(node, ast.ExceptHandler):
                visit(node.body)
    visit(tree.body)
    return out


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: str(p.relative_to(CODECS_DIR)))
def test_runtime_modules_do_not_import_fitting_at_module_level(path):
    bad = [(line, mod) for line, mod in _module_level_imports(ast.parse(path.read_text()))
           if "fitting" in mod.split(".") or mod.split(".")[-1] in ("fit", "evaluate", "neural_common")]
    assert not bad, f"{path.name} imports training/evaluation code at module level: {bad}"


@pytest.mark.parametrize("path", sorted(CODECS_DIR.glob("*.py")), ids=lambda p: p.name)
def test_family_modules_do_not_import_torch_at_module_level(path):
    """A light client imports these; torch (and the torch networks in nets/) only inside functions."""
    heavy = ("torch", "compressai", "hilbed.nodes.codecs.nets.pnc", "hilbed.nodes.codecs.nets.entropic",
             "hilbed.nodes.codecs.nets.common")
    bad = [(line, mod) for line, mod in _module_level_imports(ast.parse(path.read_text()))
           if any(mod == h or mod.startswith(h + ".") for h in heavy)]
    assert not bad, f"{path.name} imports torch at module level: {bad}"


def test_runtime_modules_import_without_torch():
    mods = ["hilbed.nodes.codecs." + p.stem for p in CODECS_DIR.glob("*.py") if p.stem != "__init__"]
    mods.append("hilbed.nodes.codecs.nets.adacompress")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any torch import fails
        import importlib
        for m in {mods!r}:
            importlib.import_module(m)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stderr


def test_fit_plugins_live_in_fitting():
    pytest.importorskip("torch")
    from hilbed.nodes.codecs.fitting import fit_families, fit_module
    fams = fit_families()
    assert set(fams) == set(LAZY_CODECS)
    for name, mod in fams.items():
        assert mod.startswith("hilbed.nodes.codecs.fitting.")
        m = fit_module(name)
        assert m is not None and callable(m.fit_cli) and callable(m.fit_main) and m.FIT_HELP
    for target in LAZY_CODECS.values():  # the runtime modules carry no CLI
        runtime = importlib.import_module(target.split(":")[0])
        assert not hasattr(runtime, "fit_cli") and not hasattr(runtime, "fit_main")


# ----------------------------------------------------------- call sites ---

@pytest.mark.parametrize("rel", ["nodes/client.py", "nodes/edge.py", "nodes/codecs/fitting/evaluate.py",
                                 "benchmarks/codec_speed.py"])
def test_callers_do_not_probe_codec_hooks_with_getattr(rel):
    tree = ast.parse((ROOT / rel).read_text())
    names = set(HOOKS) | set(FLAGS)
    bad = [node.lineno for node in ast.walk(tree)
           if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
           and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and node.args[1].value in names]
    assert not bad, f"{rel} probes codec hooks with getattr/hasattr at lines {bad}"
