"""YAML as configuration reads it: PyYAML's safe loader, refusing a key given twice.

PyYAML keeps the last of two equal keys in a mapping without a word, so a second
``destinations:`` block pasted into a channel file would silently drop the first.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` whose mappings refuse a repeated key, naming both lines."""


def _unique_mapping(loader: UniqueKeyLoader, node: MappingNode, deep: bool = False) -> Any:
    lines: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == MERGE_TAG:  # ``<<: *anchor``: explicit keys beside it win, by design
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = lines.get(key)
            lines[key] = key_node.start_mark.line
        except TypeError:  # an unhashable key: the safe constructor refuses it itself
            continue
        if first is not None:
            raise ConstructorError(
                None,
                None,
                f"{key!r} is given twice (also on line {first + 1}): YAML would keep only "
                "the last; merge them into one",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load(text: str) -> Any:
    """The YAML document in ``text``; yaml.YAMLError when it is not valid or repeats a key."""
    return yaml.load(text, Loader=UniqueKeyLoader)
