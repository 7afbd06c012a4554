"""The docs: the generated options reference, and a warning-free Sphinx build."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nenya.options import LEGACY_KEYS, OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")


def load_generator():
    """docs/gen_options.py as a module (docs/ is not a package)."""
    spec = importlib.util.spec_from_file_location("gen_options", os.path.join(DOCS, "gen_options.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_options_page_lists_every_option_and_legacy_key(tmp_path):
    path = load_generator().write_options_page(tmp_path / "options.rst")
    text = open(path, encoding="utf-8").read()
    assert text.startswith(".. This file is generated")
    assert "Options reference" in text
    for option in OPTIONS:
        assert f"``{option.name}``" in text, option.name
    for key in LEGACY_KEYS:
        assert f"``{key}``" in text, key
    # defaults are JSON, not Python reprs
    assert "``[700, 800, 900]``" in text
    assert "``false``" in text and "``False``" not in text
    assert "``null``" in text and "``None``" not in text
    # one table per section, in first-appearance order
    sections = list(dict.fromkeys(option.section for option in OPTIONS))
    positions = [text.index(f"\n{section.capitalize()}\n---") for section in sections]
    assert positions == sorted(positions)


def test_options_page_defaults_are_json_for_every_option(tmp_path):
    text = open(load_generator().write_options_page(tmp_path / "options.rst"), encoding="utf-8").read()
    for option in OPTIONS:
        if option.default is not None or option.nullable:
            assert f"``{json.dumps(option.default)}``" in text, option.name


def test_options_page_is_rewritten_only_when_it_changes(tmp_path):
    generator = load_generator()
    path = tmp_path / "options.rst"
    generator.write_options_page(path)
    os.utime(path, (0, 0))
    generator.write_options_page(path)
    assert os.stat(path).st_mtime == 0  # unchanged text: file untouched, so Sphinx does not re-read it


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    out = tmp_path / "html"
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(tmp_path / "doctrees"),
         DOCS, str(out)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )
    if result.returncode != 0:
        print(result.stdout[-5000:])
        print(result.stderr)
    assert result.returncode == 0, result.stderr[-3000:]
    page = (out / "options.html").read_text(encoding="utf-8")
    for option in OPTIONS:
        assert option.name in page, option.name
    for key in LEGACY_KEYS:
        assert key in page, key
    for name in ("index", "quickstart", "methods", "checkpoints", "faults", "api/params", "api/train_util",
                 "api/losses", "api/models", "api/data"):
        assert (out / f"{name}.html").is_file(), name
