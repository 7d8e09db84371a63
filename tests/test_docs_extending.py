"""docs/extending.md stays true: every repository path it names exists, every symbol in its
tables resolves, its format tokens parse, and its run commands use real flags and names (the
names its recipes add must not exist yet, or the recipe is stale)."""
from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "extending.md"
PACKAGES = ("quant", "cost", "policy", "trainer", "eval", "benchmarks", "tests")
# A backticked token with a slash is a repository path (optionally `file.py::name`).
PATH_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.-]+)+/?(?:::\w+)?$")
# A backticked dotted name rooted at a package, e.g. quant.formats.parse_format.
DOTTED_RE = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+$")
# What the recipes add, by the flag that takes it: none of these exists in the code yet.
RECIPE_NAMES = {
    "format": {"fp8_e4m3_ieee"},
    "--model_type": {"resnet34", "distilbert", "resnet10"},
    "--task": {"ag_news", "synth-topic", "my-reviews"},
    "--cost_function": {"squared_tunas"},
    "--cost_type": {"weight_compute"},
}
FORMAT_FLAGS = ("--search_space", "--bits", "--weight_bits", "--activation_bits")


# --- reading the guide ------------------------------------------------------------------------

def fenced_blocks(text: str, language: str | None = None) -> list[str]:
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)
    return [body for lang, body in blocks if language is None or lang == language]


def prose(text: str) -> str:
    """The guide without its fenced code blocks."""
    return re.sub(r"^```\w*\n.*?^```", "", text, flags=re.S | re.M)


def inline_code(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", prose(text))


def repo_paths(text: str) -> list[str]:
    """Backticked repository paths in the prose, and test files named in bash commands."""
    paths = [token for token in inline_code(text) if PATH_RE.match(token)]
    for command in bash_commands(text):
        paths += [word for word in shlex.split(command) if word.startswith("tests/") and PATH_RE.match(word)]
    return sorted(set(paths))


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in prose(text).splitlines():
        if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def symbol_references(text: str) -> list[tuple[str, str]]:
    """(file, symbol) from every table row whose first cell is a backticked .py file: the
    backticked names of its second cell."""
    refs = []
    for cells in table_rows(text):
        match = re.fullmatch(r"`([\w/]+\.py)`", cells[0])
        if match and len(cells) > 1:
            refs += [(match.group(1), name) for name in re.findall(r"`([^`]+)`", cells[1])]
    return refs


def format_examples(text: str) -> list[tuple[str, str, int]]:
    """(token, canonical name, bits) rows of the table headed `| token | name | bits |`."""
    examples, in_table = [], False
    for line in text.splitlines():
        if re.fullmatch(r"\|\s*token\s*\|\s*name\s*\|\s*bits\s*\|", line.strip()):
            in_table = True
        elif in_table and not line.startswith("|"):
            in_table = False
        elif in_table and not re.match(r"^\|[-| ]+\|$", line):
            token, name, bits = [cell.strip() for cell in line.strip().strip("|").split("|")]
            examples.append((token.strip("`"), name, int(bits)))
    return examples


def bash_commands(text: str) -> list[str]:
    commands = []
    for block in fenced_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def eval_run_argv(command: str) -> list[str] | None:
    words = shlex.split(command)
    return words[words.index("eval.eval_run") + 1:] if "eval.eval_run" in words else None


def flag_values(argv: list[str]) -> dict[str, str]:
    return {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag.startswith("--")
            and not argv[i + 1].startswith("--")}


# --- checking ---------------------------------------------------------------------------------

def check_path(token: str, root: Path = ROOT) -> str | None:
    """None if `token` (a path, or `file.py::name`) exists under `root`, else what is wrong."""
    path, _, name = token.partition("::")
    if not (root / path).exists():
        return f"{path} does not exist"
    if name and not re.search(rf"^\s*(?:def|class) {re.escape(name)}\b|^{re.escape(name)}\s*[:=]",
                              (root / path).read_text(), flags=re.M):
        return f"{path} defines no {name}"
    return None


def resolve_symbol(file: str, symbol: str) -> str | None:
    """None if `symbol` (dotted: attributes) is defined in module `file`, else what is wrong."""
    module_name = file[:-len(".py")].replace("/", ".")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        return f"{file}: cannot import {module_name} ({error})"
    for part in symbol.split("."):
        if not hasattr(obj, part):
            return f"{file}: no {symbol} ({part} is missing)"
        obj = getattr(obj, part)
    return None


def resolve_dotted(name: str) -> str | None:
    """None if a dotted name such as quant.formats.parse_format resolves, else what is wrong."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            if not hasattr(obj, part):
                return f"{name}: {part} is missing"
            obj = getattr(obj, part)
        return None
    return f"{name}: no importable module"


def existing_names() -> dict[str, set[str]]:
    """What the code supports today, by flag."""
    from cost.cost import REWARD_FORMS
    from cost.model_cost import CostType
    from eval.model_configs import MODEL_REGISTRY
    from eval.tasks import TASKS

    return {"--model_type": set(MODEL_REGISTRY), "--task": set(TASKS), "--cost_function": set(REWARD_FORMS),
            "--cost_type": {c.value for c in CostType}}


def parses_as_format(token: str) -> bool:
    from quant.formats import parse_format

    try:
        parse_format(token)
    except ValueError:
        return False
    return True


TEXT = GUIDE.read_text()


# --- the tests --------------------------------------------------------------------------------

def test_readme_contents_links_the_guide():
    readme = (ROOT / "README.md").read_text()
    contents = readme.split("## Contents", 1)[1].split("\n## ", 1)[0]
    assert "(docs/extending.md)" in contents


def test_the_guide_is_read_as_expected():
    # The extractors must see the guide's tables and commands: a format change must not
    # silently turn the checks below into checks of nothing.
    assert len(repo_paths(TEXT)) >= 40
    assert len(symbol_references(TEXT)) >= 150
    assert len(format_examples(TEXT)) >= 8
    assert sum(eval_run_argv(c) is not None for c in bash_commands(TEXT)) >= 8


def test_every_path_named_in_the_guide_exists():
    problems = [problem for token in repo_paths(TEXT) if (problem := check_path(token)) is not None]
    assert problems == []


def test_every_symbol_in_the_guide_tables_resolves():
    problems = [problem for file, symbol in symbol_references(TEXT)
                if (problem := resolve_symbol(file, symbol)) is not None]
    assert problems == []


def test_every_dotted_name_in_the_prose_resolves():
    problems = [problem for token in inline_code(TEXT) if DOTTED_RE.match(token)
                if (problem := resolve_dotted(token)) is not None]
    assert problems == []


def test_the_checkers_reject_made_up_names():
    assert check_path("quant/formats.py") is None and check_path("eval/metric_modules/fliqs_glue") is None
    assert not PATH_RE.match("--train_file/--validation_file") and PATH_RE.match("tests/conftest.py")
    assert check_path("tests/quant/test_formats.py::test_named_tokens") is None
    assert check_path("quant/no_such_module.py") == "quant/no_such_module.py does not exist"
    assert check_path("tests/quant/test_formats.py::test_no_such_test") == \
        "tests/quant/test_formats.py defines no test_no_such_test"
    assert resolve_symbol("quant/formats.py", "FloatFormat.bits") is None
    assert resolve_symbol("quant/formats.py", "NoSuchFormat") == \
        "quant/formats.py: no NoSuchFormat (NoSuchFormat is missing)"
    assert resolve_symbol("cost/model_cost.py", "CostType.no_such_unit") is not None
    assert resolve_symbol("quant/no_such_module.py", "parse_format").startswith(
        "quant/no_such_module.py: cannot import")
    assert resolve_dotted("quant.formats.parse_format") is None
    assert resolve_dotted("quant.formats.no_such_function") is not None
    # A guide that names a removed file or symbol fails.
    made_up = "See `quant/renamed.py`.\n\n| file | symbols | what |\n|---|---|---|\n" \
              "| `quant/formats.py` | `parse_format`, `parse_formats` | x |\n"
    assert [check_path(p) for p in repo_paths(made_up)] == [None, "quant/renamed.py does not exist"]
    assert [resolve_symbol(f, s) for f, s in symbol_references(made_up)] == \
        [None, "quant/formats.py: no parse_formats (parse_formats is missing)"]


def test_format_examples_parse_to_the_names_and_bits_given():
    from quant.formats import parse_format

    for token, name, bits in format_examples(TEXT):
        fmt = parse_format(token)
        assert (fmt.name, fmt.bits) == (name, bits), token


def test_run_commands_use_real_flags():
    from eval.eval_parse import create_arg_parser

    known = {option for action in create_arg_parser()._actions for option in action.option_strings}
    for command in bash_commands(TEXT):
        argv = eval_run_argv(command)
        if argv is not None:
            unknown = [word for word in argv if word.startswith("--") and word not in known]
            assert unknown == [], command


def test_run_commands_name_what_exists_or_what_a_recipe_adds():
    existing = existing_names()
    for command in bash_commands(TEXT):
        argv = eval_run_argv(command)
        if argv is None:
            continue
        values = flag_values(argv)
        for flag, names in existing.items():
            if flag in values:
                assert values[flag] in names | RECIPE_NAMES[flag], (flag, values[flag])
        for flag in FORMAT_FLAGS:
            for token in values.get(flag, "").split(",") if flag in values else []:
                assert parses_as_format(token) or token in RECIPE_NAMES["format"], (flag, token)


def test_recipe_names_are_in_the_guide_and_not_in_the_code_yet():
    existing = existing_names()
    for flag, names in RECIPE_NAMES.items():
        for name in names:
            assert name in TEXT, name
            added = parses_as_format(name) if flag == "format" else name in existing[flag]
            assert not added, f"{name} now exists: update the recipe in docs/extending.md that adds it"


def test_run_commands_without_recipe_names_parse(tmp_path):
    from eval.eval_parse import parse_run_args

    recipe_names = set().union(*RECIPE_NAMES.values())
    parsed = 0
    for command in bash_commands(TEXT):
        argv = eval_run_argv(command)
        if argv is None or any(word in recipe_names or set(word.split(",")) & recipe_names for word in argv):
            continue
        argv[argv.index("--output_root_dir") + 1] = str(tmp_path)
        assert parse_run_args(argv).mode == "search", command
        parsed += 1
    assert parsed >= 1


@pytest.mark.parametrize("command", [c for c in bash_commands(TEXT) if " pytest " in f" {c} "])
def test_pytest_commands_name_existing_tests(command):
    targets = [word for word in shlex.split(command) if word.startswith("tests/")]
    assert targets and all(check_path(target) is None for target in targets)
