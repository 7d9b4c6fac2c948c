"""How `builtin:expert` moves and searches, over what it remembers (`WorldMemory`), on `grid`.

Movement rules it relies on (crafter's objects.py): a move always turns the player and only moves
onto grass/sand/path with no creature (or lava, which kills — so it never moves toward lava or
unknown cells); `do` acts on the faced cell. Every plan is a list of action names plus a reason.
"""
from __future__ import annotations

import math
import random
from collections import deque

from synth_qwen.expert_memory import COLLECT, CREATURES, PLACE, WorldMemory, uses_met
from synth_qwen.grid import (DIRECTION_OF, HALF_HEIGHT, HALF_WIDTH, MOVE_FOR, SEARCH_ORDER, add, manhattan,
                             shortest_moves)


class Moves:
    """Paths to what the plan wants, the safe part of a plan, and exploring. One per episode."""

    def __init__(self, world: WorldMemory, seed: int = 0):
        self.world = world
        self.random = random.Random(seed)
        self.explore_goal: tuple[int, int] | None = None
        self.explore_stuck = 0
        self.frontier_goal: tuple[int, int] | None = None

    # -- paths ---------------------------------------------------------------------------
    def search(self, goal, max_states: int = 5000, through=None):
        """The move actions that reach a state where goal(pos, facing) holds, over the remembered map
        (grid.shortest_moves: a blocked move only turns; lava and unknown cells are never tried).
        `through`: cells treated as enterable even if blocked now."""
        world = self.world

        def enterable(cell) -> bool:
            return world.enterable(cell) or (through is not None and cell in through)
        return shortest_moves(world.pos, world.facing, world.map.get, enterable, goal, max_states)

    def go_face(self, wanted, max_states: int = 5000):
        """Moves that end facing a cell for which wanted(cell) holds, or None."""
        return self.search(lambda pos, facing: wanted(add(pos, facing)), max_states)

    def go_do(self, name: str, reason: str, hits: int = 1, max_states: int = 5000):
        """Walk to the nearest `name` (material or creature), face it and `do` it."""
        world = self.world
        if not world.known(name):
            return None
        path = self.go_face(lambda cell: world.name_at(cell) == name, max_states)
        if path is None:
            return None
        target = self.faced_after(path)
        return path + ["do"] * hits, f"subgoal: {reason}, {name} {world.where(target)}"

    def go_place(self, action: str, reason: str, where=None, max_states: int = 3000):
        """Face a cell where `action` can put its thing (and where(cell) allows it), then place."""
        world = self.world
        allowed = PLACE[action[len("place_"):]]["where"]

        def ok(cell):
            return (world.map.get(cell) in allowed and cell not in world.objects
                    and (where is None or where(cell)))
        path = self.go_face(ok, max_states)
        if path is None:
            return None
        return path + [action], f"subgoal: {reason}, {world.where(self.faced_after(path))}"

    def end_of(self, path):
        """Where the moves of `path` leave us, and facing which way (a blocked move only turns)."""
        pos, facing = self.world.pos, self.world.facing
        for action in path:
            facing = DIRECTION_OF[action]
            if self.world.enterable(add(pos, facing)):
                pos = add(pos, facing)
        return pos, facing

    def faced_after(self, path):
        pos, facing = self.end_of(path)
        return add(pos, facing)

    def reachable(self, limit: int) -> dict:
        """Cells we can walk to (at most `limit`), with their distance in moves."""
        world = self.world
        seen = {world.pos: 0}
        queue = deque([world.pos])
        while queue and len(seen) < limit:
            pos = queue.popleft()
            for d in SEARCH_ORDER:
                nxt = add(pos, d)
                if nxt not in seen and world.enterable(nxt):
                    seen[nxt] = seen[pos] + 1
                    queue.append(nxt)
        return seen

    # -- safety --------------------------------------------------------------------------
    def safe_prefix(self, actions: list[str]) -> list[str]:
        """Keep only the actions whose every possible outcome is safe and predictable: no way
        onto lava or unknown ground, and no creature able to step into a cell before we do."""
        world = self.world
        states = [(world.pos, world.facing)]
        kept = []
        for index, action in enumerate(actions):
            if action in DIRECTION_OF and index > 0:
                d = DIRECTION_OF[action]
                risky = False
                for pos, _ in states:
                    target = add(pos, d)
                    if world.map.get(target) in (None, "lava"):
                        risky = True
                    if any(n in CREATURES and manhattan(c, target) <= index
                           for c, n in world.objects.items()):
                        risky = True
                if risky:
                    break
                states = [s for pos, _ in states for s in ((add(pos, d), d), (pos, d))]
            elif action in DIRECTION_OF:
                d = DIRECTION_OF[action]
                target = add(world.pos, d)
                states = [((target if world.enterable(target) else world.pos), d)]
            kept.append(action)
        return kept

    # -- exploring -----------------------------------------------------------------------
    def explore(self):
        """Head for a far point in a random direction; pick a new one when stuck."""
        world = self.world
        reachable = self.reachable(3000)
        if len(reachable) <= 2:
            return self.dig_out()
        for _ in range(4):
            if self.explore_goal is None or manhattan(self.explore_goal, world.pos) < 4 or self.explore_stuck >= 3:
                angle = self.random.uniform(0, 2 * math.pi)
                self.explore_goal = (world.pos[0] + round(24 * math.cos(angle)),
                                     world.pos[1] + round(24 * math.sin(angle)))
                self.explore_stuck = 0
            goal = self.explore_goal
            best = min(reachable, key=lambda c: (manhattan(c, goal) + 0.3 * reachable[c], c))
            if best != world.pos:
                path = self.search(lambda pos, facing: pos == best, 8000)
                if path:
                    self.explore_stuck = 0 if manhattan(best, goal) < manhattan(world.pos, goal) else self.explore_stuck + 1
                    return path, f"subgoal: explore, heading {world.where(goal)}"
            self.explore_stuck = 3
        return self.dig_out()

    def explore_frontier(self, stale: int | None = None, max_states: int = 8000):
        """Walk to the nearest cell from which the view shows ground never seen (or, with `stale`,
        not seen for that many steps: cows wander into ground seen before). Heading off in a random
        direction mostly sees old ground again. The goal is kept until reached or seen: re-choosing
        each turn turns back and forth."""
        world = self.world
        # what a view from there shows at its corners and edge midpoints
        border = [(x, y) for x in (-HALF_WIDTH, 0, HALF_WIDTH) for y in (-HALF_HEIGHT, 0, HALF_HEIGHT) if x or y]

        def unseen(cell) -> bool:
            seen = world.seen_at.get(cell)
            return seen is None or (stale is not None and seen < world.step - stale)

        def frontier(pos) -> bool:
            return any(unseen(add(pos, offset)) for offset in border)
        goal = self.frontier_goal
        if goal is None or goal == world.pos or not frontier(goal):
            # breadth-first: the first state at the new goal is also the shortest way to it
            path = self.search(lambda pos, facing: pos != world.pos and frontier(pos), max_states)
            goal = self.frontier_goal = self.end_of(path)[0] if path else None
        else:
            path = self.search(lambda pos, facing: pos == goal, max_states)
        if not path:
            self.frontier_goal = None
            return None
        return path, f"subgoal: explore, toward ground not seen {'yet' if stale is None else 'lately'} {world.where(goal)}"

    def dig_out(self):
        """Walled in (a shelter, a tunnel): mine a way out, or at least turn and look."""
        world = self.world
        if uses_met(world.inventory, COLLECT["stone"]["require"]):
            path = self.go_face(lambda c: world.map.get(c) in ("stone", "coal", "iron")
                                and uses_met(world.inventory, COLLECT[world.map[c]]["require"]), 40)
            if path is not None:
                return path + ["do"], "subgoal: dig out, mine the wall"
        d = self.random.choice(SEARCH_ORDER)
        return [MOVE_FOR[d]], "subgoal: explore, no known way, try a direction"
