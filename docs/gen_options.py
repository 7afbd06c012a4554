"""Generate docs/options.rst, the options reference, from the schema in nenya.options.

The page is never written by hand: ``conf.py`` calls :func:`write_options_page` when Sphinx
starts (``builder-inited``), and ``tests/test_docs.py`` calls it directly.  Run this file to
write the page without building the docs: ``python docs/gen_options.py [PATH]``.
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

TYPE_NAMES = {
    "int": "int",
    "float": "float",
    "bool": "bool",
    "str": "string",
    "int_list": "list of int",
    "float_list": "list of float",
    "str_list": "list of string",
    "float_list_or_auto": "list of float or \"auto\"",
    "float_or_auto": "float or \"auto\"",
    "experiments": "list of objects",
}

INTRO = """\
An opts file is one flat JSON object of options, Nenya style
(``{"ssl_method": "simclr", "learning_rate": 0.05, ...}``); any key left out takes the
default below, and keys starting with ``_`` (such as ``_versions``) are ignored.
On the command line, ``key=value`` arguments after the opts file override it, each value
parsed as JSON (``epochs=3``, ``flip=true``, ``lr_decay_epochs=[30,40]``) and kept as a plain
string when it is not JSON (``ssl_model=resnet50``).
An unknown key is an error with a did-you-mean, a value of the wrong type or outside the
allowed values is an error (numbers are checked against the range in the *allowed values*
column when the options are loaded, and NaN or infinity is never accepted), and *derived*
keys are recomputed by ``option_preprocess`` whatever the file says; the resolved options
are saved as ``opts.json`` in the run folder, and that file can be passed back to
``python -m nenya.train``.
"""

# Characters docutils would read as markup in plain text.
_SPECIAL = re.compile(r"([\\*`_|<>\[\]])")
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters allowed right before an inline-literal start-string and right after its end-string.
_BEFORE_OK = set(" \t\n-:/'\"<([{")
_AFTER_OK = set(" \t\n-.,:;!?\\/'\")]}>")


def _escape(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text)


def _literal(text: str) -> str:
    """An inline literal; ``text`` must not contain a backquote."""
    return f"``{text}``"


def rst_text(text: str, names) -> str:
    """Plain text as reStructuredText: markup characters escaped, option names as literals."""
    out = []
    position = 0
    for match in _WORD.finditer(text):
        word = match.group(0)
        if word not in names or "_" not in word:  # "head", "warm", "seed" read better as words
            continue
        start, end = match.span()
        out.append(_escape(text[position:start]))
        before = text[start - 1] if start > 0 else " "
        after = text[end] if end < len(text) else " "
        out.append(("" if before in _BEFORE_OK else "\\ ") + _literal(word) + ("" if after in _AFTER_OK else "\\ "))
        position = end
    out.append(_escape(text[position:]))
    return "".join(out)


def format_default(option) -> str:
    """The default as JSON (``[700, 800, 900]``, ``0.0001``, ``null``), or *required*."""
    if option.default is None and not option.nullable:
        return "*required*"
    return _literal(json.dumps(option.default))


def format_type(option) -> str:
    kind = TYPE_NAMES.get(option.type, option.type)
    return f"{kind} or null" if option.nullable else kind


def format_range(option) -> str:
    """The declared range and rule of a numeric option, e.g. 'each in [0, 1)' or 'at least 1'."""
    text = option.range_text()
    if text and option.type.endswith("_list"):
        text = f"each {text}"
    parts = [part for part in (text, option.rule) if part]
    if option.type in ("float", "float_list", "float_list_or_auto", "float_or_auto"):
        parts.append("finite")
    return _escape("; ".join(parts))


def format_choices(option, registries: dict) -> str:
    if option.choices is not None:
        return ", ".join(_literal(json.dumps(choice)) for choice in option.choices)
    if option.name in registries:
        names, where = registries[option.name]
        return ", ".join(_literal(json.dumps(name)) for name in names) + f" ({where})"
    if option.type == "int_list":
        return "; ".join(part for part in (format_range(option), "JSON list, or a comma-separated string") if part)
    return format_range(option)


def format_methods(option) -> str:
    return ", ".join(_literal(method) if method != "all" else "all" for method in option.methods)


def _registries() -> dict:
    """Names that method and model accept, read from the method and model registries."""
    import nenya.methods  # noqa: F401  (fills the registries)
    import nenya.models  # noqa: F401
    from nenya.registry import METHODS, MODELS

    return {
        "method": (list(METHODS), "registered methods"),
        "model": (list(MODELS), "registered models"),
    }


def _table(header, rows, widths) -> list[str]:
    lines = [".. list-table::", "   :header-rows: 1", f"   :widths: {' '.join(map(str, widths))}", ""]
    for row in [header, *rows]:
        for index, cell in enumerate(row):
            lines.append(f"   {'*' if index == 0 else ' '} - {cell}".rstrip() if cell else
                         f"   {'*' if index == 0 else ' '} -")
    lines.append("")
    return lines


def _heading(text: str, char: str, overline: bool = False) -> list[str]:
    rule = char * len(text)
    return [rule, text, rule, ""] if overline else [text, rule, ""]


def render_options_page() -> str:
    """The whole options reference as reStructuredText."""
    from nenya.options import ALIASES, LEGACY_KEYS, OPTIONS

    names = {option.name for option in OPTIONS}
    registries = _registries()
    sections: dict[str, list] = {}
    for option in OPTIONS:
        sections.setdefault(option.section, []).append(option)

    lines = [".. This file is generated by docs/gen_options.py from nenya/options/; do not edit it.", ""]
    lines += [".. _options:", ""]
    lines += _heading("Options reference", "=", overline=True)
    lines += [INTRO, ""]
    lines += ["Sections: " + ", ".join(f":ref:`{section} <options-{section}>`" for section in sections) + ".", ""]

    header = ["key", "type", "default", "allowed values", "methods", "description"]
    for section, options in sections.items():
        lines += [f".. _options-{section}:", ""]
        lines += _heading(section.capitalize(), "-")
        rows = []
        for option in options:
            description = rst_text(option.help, names)
            if option.derived:
                description += " — *derived* by ``option_preprocess``: a value given is recomputed"
            rows.append([_literal(option.name), format_type(option), format_default(option),
                         format_choices(option, registries), format_methods(option), description])
        lines += _table(header, rows, widths=[16, 10, 12, 16, 10, 36])

    lines += [".. _options-aliases:", ""]
    lines += _heading("Other names", "-")
    lines += ["These keys are accepted as written and read as the canonical key; the resolved",
              "``opts.json`` uses the canonical name.", ""]
    rows = [[_literal(alias), _literal(name)] for alias, name in ALIASES.items()]
    lines += _table(["key", "read as"], rows, widths=[40, 60])

    lines += [".. _options-legacy:", ""]
    lines += _heading("Legacy Nenya keys", "-")
    lines += ["Opts files written for the original Nenya keep working: these keys, which nenya does",
              "not use, are accepted with a warning and ignored.", ""]
    rows = [[_literal(key), rst_text(reason, names)] for key, reason in LEGACY_KEYS.items()]
    lines += _table(["key", "why it is ignored"], rows, widths=[25, 75])
    return "\n".join(lines).rstrip() + "\n"


def write_options_page(path) -> str:
    """Write the options reference to ``path`` (only when its text changed); return the path."""
    path = os.fspath(path)
    text = render_options_page()
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return path
    except FileNotFoundError:
        pass
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, path)
    return path


if __name__ == "__main__":
    print(write_options_page(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "options.rst")))
