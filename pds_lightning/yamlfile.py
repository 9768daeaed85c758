"""YAML config files as untrusted input: plain data only, and a bounded size once aliases are expanded.

PyYAML shares an anchored node between its aliases, so a "billion laughs" file (each level a list of aliases
to the level above) composes in microseconds; whoever walks or copies the data afterwards (jsonargparse
does, for every `--config`) expands it to exponentially many nodes. The size is measured on the composed
node graph (each node counted once per path that reaches it, shared counts memoised), before anything is built.
A string value counts as the YAML it holds: jsonargparse parses a string again where it expects a list, a
mapping or a number (`model: '{a: &a [...], b: [*a, *a]}'`), so a bomb can hide inside quotes.
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
    """Nodes of the document with aliases expanded, a string holding YAML as its own expanded nodes
    (`string_size`), counted up to just past `limit`; ValueError on an alias to an enclosing node (a recursive
    structure expands without end)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            own = string_size(node.value, limit) if isinstance(node, yaml.ScalarNode) else 1
            sizes[key] = min(limit + 1, own + sum(sizes[id(c)] for c in _children(node)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ValueError("an alias refers to a node that contains it (a recursive structure)")
        open_nodes.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)
    return sizes[id(root)]


def string_size(text: str, limit: int = MAX_EXPANDED_NODES) -> int:
    """Nodes of the YAML a string value holds with aliases expanded (1 for text that is not YAML)."""
    node = _aliased_node(text)
    return 1 if node is None else expanded_size(node, limit)


def _aliased_node(text: str) -> yaml.Node | None:
    """The node graph of `text` where it may expand beyond the text's own length, else None (also for text that
    is not YAML). Only an alias (`*name`) expands, so only a text holding a `*` is composed."""
    if "*" not in text:
        return None
    loader = yaml.SafeLoader(text)
    try:
        return loader.get_single_node()
    except yaml.YAMLError:
        return None
    finally:
        loader.dispose()


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
    return _bounded(node, where)


def _bounded(node: yaml.Node | None, where: str) -> yaml.Node | None:
    """`node`, refused when it expands beyond MAX_EXPANDED_NODES."""
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


def check_value(text: str, where: str) -> None:
    """Refuse a value whose YAML expands beyond MAX_EXPANDED_NODES (ConfigFileError); text that is not YAML
    passes (the parser that reads it reports that, or takes it as a plain string)."""
    _bounded(_aliased_node(text), where)


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


__all__ = ["ConfigFileError", "MAX_EXPANDED_NODES", "check_file", "check_text", "check_value", "expanded_size",
           "load_file", "string_size"]
