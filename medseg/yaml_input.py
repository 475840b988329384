"""YAML and validation errors read safely: bounded in size, expansion and depth, and
reported in one line that never renders a whole input.

A 660-byte YAML of nested aliases ("billion laughs") expands to billions of nodes; PyYAML
shares them, but validating or printing the result costs minutes and gigabytes. The
composed node graph is measured (shared nodes counted once per use) before anything is
built from it.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from pydantic import ValidationError

from medseg.errors import ConfigError

# Expanded nodes a config may have (a full recipe has a few hundred), and the size of the
# text (a model config.yaml is a few kB).
MAX_NODES = 100_000
MAX_BYTES = 1 << 20
SHOWN_CHARACTERS = 60
SHOWN_PROBLEMS = 8


def _expanded_size(root: yaml.Node, limit: int) -> int | None:
    """Nodes ``root`` stands for once every alias is expanded; None past ``limit`` or for
    a recursive document (an alias inside its own anchor)."""
    sizes: dict[int, int] = {}
    visiting: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done:
            visiting.discard(id(node))
            size = 1 + sum(sizes[id(child)] for child in children)
            if size > limit:
                return None
            sizes[id(node)] = size
            continue
        if id(node) in visiting:
            return None  # reached again before it was measured: a cycle
        visiting.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def load_yaml(text: str, source: str) -> Any:
    """Parse ``text`` with PyYAML's safe loader; ``ConfigError`` naming ``source`` (one
    line) when it is not YAML, uses tags, is over ``MAX_BYTES``, or expands past
    ``MAX_NODES`` nodes or into itself."""
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{source}: {len(text)} characters; a config is under {MAX_BYTES}")
    loader = None
    try:
        # The reader checks the characters as the loader is made (a control character
        # fails here).
        loader = yaml.SafeLoader(text)
        root = loader.get_single_node()
        if root is None:
            return None
        if _expanded_size(root, MAX_NODES) is None:
            raise ConfigError(
                f"{source}: aliases expand past {MAX_NODES} values (or into themselves); refused"
            )
        return loader.construct_document(root)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(error, "problem", None) or type(error).__name__
        raise ConfigError(f"{source}: not valid YAML{where} ({problem})") from error
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def shorten(value: Any) -> str:
    """``repr(value)`` cut to ``SHOWN_CHARACTERS``: an error names a value, never dumps it."""
    text = bounded_repr(value)
    if len(text) > SHOWN_CHARACTERS:
        text = text[: SHOWN_CHARACTERS - 3] + "..."
    return text


def bounded_repr(value: Any) -> str:
    """A repr bounded in work as well as length (containers show their first items only)."""
    import reprlib

    limits = reprlib.Repr()
    limits.maxlevel, limits.maxlist, limits.maxdict, limits.maxstring = 2, 4, 4, 40
    limits.maxother = 40
    return limits.repr(value)


# Pydantic names the branch of a union (``int | "auto"``) in an error's location.
_UNION_BRANCH = re.compile(r"^(int|float|str|bool|list\[.*\]|literal\[.*\]|constrained-.*)$")


def describe_validation_error(error: ValidationError) -> str:
    """Every problem of a pydantic ``error`` as ``key: what is wrong (got value)``, joined
    in one line; values are shortened, never rendered whole."""
    problems = []
    items = error.errors()
    seen = set()
    for item in items[:SHOWN_PROBLEMS]:
        parts = [str(part) for part in item["loc"] if not _UNION_BRANCH.match(str(part))]
        key = ".".join(parts) or "(top level)"
        if key in seen:
            continue  # one line per key: the first branch of a union says what was wanted
        seen.add(key)
        if item["type"] == "extra_forbidden":
            problems.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            problems.append(f"{key}: required key missing")
        else:
            message = item["msg"].removeprefix("Value error, ").splitlines()[0]
            problems.append(f"{key}: {message} (got {shorten(item.get('input'))})")
    if len(items) > SHOWN_PROBLEMS:
        problems.append(f"and {len(items) - SHOWN_PROBLEMS} more")
    return "; ".join(problems)
