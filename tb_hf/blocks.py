"""The transformer blocks of a model, their stacks, and each parameter's depth from the top.

A **block** is a child of an outermost ``nn.ModuleList`` of at least two children of one class, each of which owns a
parameter with two or more dimensions. One generic rule, no per-architecture table: it finds ``encoder.layer``
(BERT family), ``transformer.h`` (GPT-2), ``model.layers`` (LLaMA family), both T5 stacks, a vision tower and a
language model's stacks, and works unchanged through peft wrappers. A **stack** is one such list.

**Depth** (for a layer-wise learning-rate profile, `depths`) is counted per stack from its top block (depth 0), and
from what a module is, never from the order in which a model registers its modules: the embeddings are below the
first block of their stack, everything else outside the blocks (head, pooler, final norm, a projector between two
stacks) is at the top.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn
from transformers.utils import logging

from .quantized import full_shape

__all__ = ["Position", "block_stacks", "depths", "find_blocks", "parent_paths", "positions"]

logger = logging.get_logger(__name__)


def parent_paths(name: str) -> Iterator[str]:
    """``"a.b.c"`` -> ``"a.b"``, ``"a"``: the paths of the modules containing a parameter, innermost first."""
    while "." in name:
        name = name.rsplit(".", 1)[0]
        yield name


def _has_matrix(module: nn.Module) -> bool:
    return any(len(full_shape(p)) >= 2 for p in module.parameters())


def _is_layer(module: nn.Module) -> bool:
    """One layer, not a block: a Linear (GPT-2's Conv1D), an embedding or a convolution."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, nn.Linear | nn.Embedding | nn.modules.conv._ConvNd | Conv1D)


def _is_block_list(module: nn.Module, min_len: int = 2) -> bool:
    """A list of transformer blocks: children of one class, or composite modules of several classes (a hybrid
    stack such as Jamba's attention and Mamba layers), each holding a matrix. A list of single layers (per-codebook
    embeddings, several classification heads) is not a stack of blocks."""
    if not isinstance(module, nn.ModuleList) or len(module) < min_len:
        return False
    if not all(_has_matrix(child) for child in module) or all(_is_layer(child) for child in module):
        return False
    first = type(module[0])
    return all(type(child) is first for child in module) or all(
        next(child.children(), None) is not None for child in module
    )


def _is_deep(module: nn.Module) -> bool:
    """A composite of composites (a transformer block: attention and MLP modules), not a small stack of layers (an MLP
    head, a convolutional feature-encoder layer)."""
    return any(next(child.children(), None) is not None for child in module.children())


def find_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The transformer blocks of ``model``, as ``(module path, block)`` pairs in model order.

    A block is a child of an outermost ``nn.ModuleList`` with at least two children that all share one class
    (or are all composite modules, as in hybrid attention/Mamba stacks) and each own (at any depth) a parameter
    with ``ndim >= 2``. A model with no such list but a list of one composite block (a one-layer model,
    ALBERT's shared layer group) gets that one block, with a warning. Lists inside a found list are not searched, so
    per-block lists (T5's ``layer``, expert lists) never show up as blocks of their own; several stacks
    (T5's encoder and decoder) are all found. Paths match ``model.named_modules()``, so a peft-wrapped model
    gives ``"base_model.model.<path>"``.

    Raises:
        ValueError: If the model has no such list.
    """
    blocks: list[tuple[str, nn.Module]] = []

    def visit(module: nn.Module, prefix: str, min_len: int) -> None:
        for name, child in module.named_children():
            path = f"{prefix}.{name}" if prefix else name
            if _is_block_list(child, min_len):
                blocks.extend((f"{path}.{i}", block) for i, block in enumerate(child))
            else:
                visit(child, path, min_len)

    visit(model, "", 2)
    deep = {path.rsplit(".", 1)[0] for path, block in blocks if _is_deep(block)}
    if deep:  # transformer blocks hold attention and MLP modules: lists of plain MLPs beside them are heads
        blocks = [(path, block) for path, block in blocks if path.rsplit(".", 1)[0] in deep]
    if not blocks:
        # A one-layer model, or ALBERT's single shared layer group: a list holding one composite block.
        visit(model, "", 1)
        blocks = [(path, block) for path, block in blocks if next(block.children(), None) is not None]
        if blocks:
            logger.warning_once(
                f"TempBalance: {type(model).__name__} has a single transformer block ({blocks[0][0]}): with "
                "tb_unit='block' it is one unit, and one unit always gets factor 1. Use tb_unit='matrix' to balance "
                "the matrices inside it."
            )
    if not blocks:
        raise ValueError(
            f"Found no transformer blocks in {type(model).__name__}: TempBalance looks for an nn.ModuleList of "
            "transformer layers (children of one class, or composite layers of a hybrid stack, each holding a weight "
            "matrix), as in encoder.layer, model.layers or transformer.h. This model has none, so there is nothing "
            "to balance: train it with the plain Trainer, or wrap its layers in an nn.ModuleList."
        )
    return blocks


def block_stacks(blocks: list[str]) -> list[list[str]]:
    """The block paths of `find_blocks` grouped by the list holding them (``encoder.block`` and ``decoder.block`` of
    T5, a vision tower's and a language model's layers), in model order."""
    stacks: dict[str, list[str]] = {}
    for path in blocks:
        stacks.setdefault(path.rsplit(".", 1)[0], []).append(path)
    return list(stacks.values())


def _is_embedding(name: str, modules: dict[str, nn.Module]) -> bool:
    """A parameter of an embedding: owned by an ``nn.Embedding`` (or a peft wrapper of one), inside a module whose
    name says so (``embeddings``, ``embed_tokens``, ``patch_embed``: position tables and their norm included), or
    named so itself (wav2vec2's ``masked_spec_embed``)."""
    owner = name.rsplit(".", 1)[0] if "." in name else ""
    if isinstance(modules.get(owner), nn.Embedding) or isinstance(getattr(modules.get(owner), "base_layer", None),
                                                                     nn.Embedding):  # fmt: skip
        return True
    return any("embed" in part.lower() for part in name.split("."))  # its module's name, or its own (mask_embed)


def _common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass(frozen=True)
class Position:
    """Where a parameter sits for a layer-wise profile: ``kind`` is ``"block"``, ``"embeddings"`` or ``"head"``
    (everything else outside the blocks: classification head, pooler, final norm, a projector between stacks), and
    ``depth`` its depth from the top of its stack (0 for the top block and the head)."""

    kind: str
    depth: int


def positions(model: nn.Module, blocks: list[str] | None = None) -> dict[str, Position]:
    """The `Position` of every trainable parameter, for a layer-wise learning-rate profile.

    * In block i of a stack of n blocks: depth ``n − 1 − i`` (the top block 0). Each stack counts on its own: T5's
      encoder and decoder, a vision tower and a language model.
    * An embedding (`_is_embedding`): one below the first block of its stack, ``n`` (its stack: the one whose path
      shares the most leading names with it; the longest stack if none does, e.g. T5's ``shared``).
    * Anything else outside the blocks (``"head"``: classification head, pooler, final norm, a projector): 0.

    ``blocks``: the paths of `find_blocks` if already known.
    """
    blocks = [path for path, _ in find_blocks(model)] if blocks is None else list(blocks)
    stacks = block_stacks(blocks)
    depth_of_block = {path: len(stack) - 1 - i for stack in stacks for i, path in enumerate(stack)}
    modules = dict(model.named_modules())
    out: dict[str, Position] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        block = next((p for p in parent_paths(name) if p in depth_of_block), None)
        if block is not None:
            out[name] = Position("block", depth_of_block[block])
        elif _is_embedding(name, modules):
            stack = max(stacks, key=lambda s: (_common_prefix(name, s[0].rsplit(".", 1)[0]), len(s)))
            out[name] = Position("embeddings", len(stack))
        else:
            out[name] = Position("head", 0)
    return out


def depths(model: nn.Module, blocks: list[str] | None = None) -> dict[str, int]:
    """Depth from the top of every trainable parameter (`positions`: per stack, the embeddings one below the first
    block, the head and everything else outside the blocks 0)."""
    return {name: position.depth for name, position in positions(model, blocks).items()}
