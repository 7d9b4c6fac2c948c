"""Crafter's geometry, once: the view window, directions, who may walk where, and the shortest moves.

Offsets are (dx east, dy south) from the player. The observation (its route hints) and the expert
(its plans) both move through `shortest_moves`, so they agree on every tie.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

from crafter import constants

Cell = tuple[int, int]

WORLD_SIZE = 64  # stock area, cells per side
# Stock renders a 9x9 grid of which the bottom rows show the inventory: the world part is 9 x 7.
STOCK_VIEW = 9
INVENTORY_ROWS = math.ceil(len(constants.items) / STOCK_VIEW)
VIEW_WIDTH, VIEW_HEIGHT = STOCK_VIEW, STOCK_VIEW - INVENTORY_ROWS
HALF_WIDTH, HALF_HEIGHT = VIEW_WIDTH // 2, VIEW_HEIGHT // 2

MOVE_FOR = {(-1, 0): "move_left", (1, 0): "move_right", (0, -1): "move_up", (0, 1): "move_down"}
DIRECTION_OF = {name: d for d, name in MOVE_FOR.items()}
COMPASS = {(-1, 0): "west", (1, 0): "east", (0, -1): "north", (0, 1): "south"}
SEARCH_ORDER = ((0, 1), (-1, 0), (1, 0), (0, -1))  # south first: ties break the same way everywhere
WALKABLE = frozenset(constants.walkable)  # grass, sand, path: where the player and zombies walk


def add(a: Cell, b: Cell) -> Cell:
    return (a[0] + b[0], a[1] + b[1])


def sub(a: Cell, b: Cell) -> Cell:
    return (a[0] - b[0], a[1] - b[1])


def manhattan(a: Cell, b: Cell = (0, 0)) -> int:
    return abs(a[0] - b[0]) + abs(a[1] - b[1])


def view_offsets() -> Iterator[Cell]:
    """Every visible offset except the player's own cell, west to east, north to south in a column."""
    for dx in range(-HALF_WIDTH, HALF_WIDTH + 1):
        for dy in range(-HALF_HEIGHT, HALF_HEIGHT + 1):
            if (dx, dy) != (0, 0):
                yield dx, dy


def in_view(dx: int, dy: int) -> bool:
    return abs(dx) <= HALF_WIDTH and abs(dy) <= HALF_HEIGHT


def offset_text(dx: int, dy: int) -> str:
    """(2, -1) -> '2E 1N'. x grows east, y grows south."""
    parts = []
    if dx:
        parts.append(f"{abs(dx)}{'E' if dx > 0 else 'W'}")
    if dy:
        parts.append(f"{abs(dy)}{'S' if dy > 0 else 'N'}")
    return " ".join(parts)


def shortest_moves(start: Cell, facing: Cell, cell_at: Callable[[Cell], str | None],
                   enterable: Callable[[Cell], bool], goal: Callable[[Cell, Cell], bool],
                   max_states: int | None = None) -> list[str] | None:
    """Breadth-first over (position, facing): the fewest move actions that reach a state where
    goal(position, facing) holds, or None. A move toward an enterable cell moves there; toward anything
    else it only turns (Crafter's rule). Unknown cells (cell_at gives None) and lava are never tried."""
    state = (start, tuple(facing))
    parent: dict = {state: None}
    queue = [state]
    for state in queue:
        if goal(*state):
            moves = []
            while parent[state] is not None:
                state, move = parent[state]
                moves.append(move)
            return moves[::-1]
        if max_states is not None and len(parent) >= max_states:
            continue  # the budget is spent: only states already queued are still checked
        position = state[0]
        for d in SEARCH_ORDER:
            ahead = add(position, d)
            cell = cell_at(ahead)
            if cell is None or cell == "lava":
                continue
            new = (ahead if enterable(ahead) else position, d)
            if new not in parent:
                parent[new] = (state, MOVE_FOR[d])
                queue.append(new)
    return None
