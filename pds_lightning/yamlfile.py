"""YAML config files as untrusted input: plain data only, and a bounded size once aliases are expanded.

PyYAML shares an anchored node between its aliases, so a "billion laughs" file (each level a list of aliases
to the level above) composes in microseconds; whoever walks or copies the data afterwards (jsonargparse
does, for every `--config`) expands it to exponentially many nodes. The size is measured on the composed
node graph (each node counted once per path that reaches it, shared counts memoised), before anything is built.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

#: Most nodes a config may hold with every alias expanded; real configs hold a few hundred.
MAX_EXPANDED_NODES = 100_000


class ConfigFileError(ValueError):
    """A config file that is not plain YAML data of a sane size; the message names the file and the fix."""


def _describe(err: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: what is wrong, and where."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return " ".join(str(err).split())
    text = "; ".join(part for part in (err.context, err.problem) if part)
    mark = err.problem_mark or err.context_mark
    return f"{text} (line {mark.line + 1}, column {mark.column + 1})" if mark else text


def expanded_size(root: yaml.Node, limit: int = MAX_EXPANDED_NODES) -> int:
    """Nodes of the document with aliases expanded, counted up to just past `limit`; ValueError on an alias
    to an enclosing node (a recursive structure expands without end)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(limit + 1, 1 + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ValueError("an alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _compose(loader: yaml.SafeLoader, where: str) -> yaml.Node | None:
    """The document's node graph, refused when it expands beyond MAX_EXPANDED_NODES."""
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as err:
        raise ConfigFileError(f"config {where} is not valid YAML: {_describe(err)}") from err
    if node is None:
        return None
    try:
        size = expanded_size(node)
    except ValueError as err:
        raise ConfigFileError(f"config {where} is refused: {err}; write the values out") from err
    if size > MAX_EXPANDED_NODES:
        raise ConfigFileError(f"config {where} is refused: its aliases (*name) expand to more than "
                              f"{MAX_EXPANDED_NODES:,} values (an alias bomb?); a config holds a few hundred, "
                              "write them out without nested aliases")
    return node


def check_text(text: str, where: str) -> None:
    """Refuse YAML text that does not parse, or whose aliases expand beyond MAX_EXPANDED_NODES (ConfigFileError)."""
    loader = yaml.SafeLoader(text)
    try:
        _compose(loader, where)
    finally:
        loader.dispose()


def check_file(path: str | os.PathLike) -> None:
    """check_text on a file's contents (a config that jsonargparse will then read)."""
    with open(path, encoding="utf-8") as fh:
        check_text(fh.read(), str(path))


def load_file(path: str | os.PathLike) -> Any:
    """The plain data of a YAML file (mappings, lists, strings, numbers, booleans, null), after check_text's
    checks; any language-specific tag (e.g. !!python/object/apply) is refused before anything is built."""
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    loader = yaml.SafeLoader(text)
    try:
        node = _compose(loader, str(path))
        if node is None:
            return None
        try:
            return loader.construct_document(node)
        except yaml.constructor.ConstructorError as err:
            raise ConfigFileError(f"config {path} holds a YAML tag that is not plain data: {_describe(err)}; "
                                  "configs may hold only mappings, lists, strings, numbers and booleans") from err
    finally:
        loader.dispose()


__all__ = ["ConfigFileError", "MAX_EXPANDED_NODES", "check_file", "check_text", "expanded_size", "load_file"]
