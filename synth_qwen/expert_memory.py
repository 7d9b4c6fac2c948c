"""What `builtin:expert` knows of the world: where it stands, what is where, what it carries.

It sees only what `Observation` shows (the 9x7 view, vitals, inventory, facing) and remembers
earlier views of the episode in a map it builds by dead reckoning: each turn it replays last turn's
actions on the map, keeps the outcome whose predicted view matches what it sees now, then writes the
new view in. Positions are relative to where the episode started.

The player updates before every creature in a step, so the first action of a turn is fully
predictable; later moves may have been blocked by a creature that stepped in the way.
"""
from __future__ import annotations

from crafter import constants

from synth_qwen.grid import DIRECTION_OF, WALKABLE, add, manhattan, offset_text, sub, view_offsets
from synth_qwen.observation import Observation

# Game data, read from crafter's own tables
MATERIALS = frozenset(constants.materials)
CREATURES = frozenset({"cow", "zombie", "skeleton", "arrow"})
PLANTS = frozenset({"sapling", "ripe plant"})
HOSTILE = frozenset({"zombie", "skeleton", "arrow"})
COLLECT = constants.collect
PLACE = constants.place
# Material under a creature we have never seen uncovered (where each kind lives).
GROUND_UNDER = {"cow": "grass", "zombie": "grass", "sapling": "grass", "ripe plant": "grass",
                "skeleton": "path"}
NEVER_SEEN = -10**9  # the step a creature kind was last seen, before the first sighting


def uses_met(inventory: dict, uses: dict) -> bool:
    return all(inventory.get(item, 0) >= amount for item, amount in uses.items())


class WorldMemory:
    """One per episode. `update(obs)` each turn, before planning; `moved(actions)` after it."""

    def __init__(self):
        self.pos = (0, 0)                  # relative to where the episode started
        self.facing = (0, 1)
        self.map: dict[tuple[int, int], str] = {}     # position -> material (or "edge")
        self.objects: dict[tuple[int, int], str] = {}  # what stands where, current view only
        self.plants: set[tuple[int, int]] = set()      # saplings we know of, remembered
        self.cows: dict[tuple[int, int], int] = {}     # where cows were last seen -> step
        self.last_actions: list[str] = []  # the actions taken since the last update, to replay
        self.last_objects: dict[tuple[int, int], str] = {}
        self.inventory: dict[str, int] = {}
        self.zombie_seen_step = NEVER_SEEN
        self.seen_at: dict[tuple[int, int], int] = {}  # position -> the last step it was in view
        self.step = 0

    def update(self, obs: Observation) -> None:
        self.inventory = dict(obs.inventory)
        self._localize(obs)
        self._remember(obs)

    def moved(self, actions: list[str], position: tuple[int, int] | None = None) -> None:
        """These actions were taken. With `position` (where the player now stands relative to the
        episode's start) no dead reckoning is needed."""
        if position is None:
            self.last_actions = list(actions)
        else:
            self.pos, self.last_actions = tuple(position), []

    # -- where am I ---------------------------------------------------------------------
    def _localize(self, obs: Observation) -> None:
        """Replay last turn's actions on the map; a move may fail, so keep the outcome whose
        predicted view matches what we see now (ties: the fewest surprises)."""
        if not self.last_actions:
            self.facing = obs.facing
            return
        best = None
        for pos, surprise in self._outcomes(self.last_actions):
            score = (self._mismatch(pos, obs), surprise)
            if best is None or score < best[0]:
                best = (score, pos)
        self.pos = best[1]
        self.facing = obs.facing

    def _outcomes(self, actions: list[str]) -> list[tuple[tuple[int, int], int]]:
        """Every end position the actions could lead to, with how many moves went unexpectedly."""
        states = [(self.pos, self.facing, 0, {})]
        for index, action in enumerate(actions):
            nxt_states = []
            for pos, facing, surprise, changed in states:
                if action in DIRECTION_OF:
                    d = DIRECTION_OF[action]
                    target = add(pos, d)
                    material = changed.get(target, self.map.get(target))
                    open_ground = material in WALKABLE or material == "lava"
                    if index == 0:  # the player moves before any creature: exact
                        moved = open_ground and target not in self.last_objects
                        nxt_states.append((target if moved else pos, d, surprise, changed))
                    elif material is None or open_ground:
                        nxt_states.append((target, d, surprise + (material is None), changed))
                        nxt_states.append((pos, d, surprise + 1, changed))
                    else:
                        nxt_states.append((pos, d, surprise, changed))
                else:
                    changed = self._predict_change(action, add(pos, facing), changed)
                    nxt_states.append((pos, facing, surprise, changed))
            states = nxt_states
        return [(pos, surprise) for pos, _, surprise, _ in states]

    def _predict_change(self, action, cell, changed):
        material = changed.get(cell, self.map.get(cell))
        if action == "do" and material in COLLECT and material != "water":
            if uses_met(self.inventory, COLLECT[material]["require"]):
                return {**changed, cell: COLLECT[material]["leaves"]}
        if action.startswith("place_") and action != "place_plant":
            name = action[len("place_"):]
            if material in PLACE[name]["where"] and uses_met(self.inventory, PLACE[name]["uses"]):
                return {**changed, cell: name}
        return changed

    def _mismatch(self, pos, obs: Observation) -> int:
        count = 0
        for dx, dy in view_offsets():
            known = self.map.get((pos[0] + dx, pos[1] + dy))
            seen = obs.view.get((dx, dy), "edge")
            if known is not None and seen in MATERIALS | {"edge"} and known != seen:
                count += 1
        return count

    # -- what is where ------------------------------------------------------------------
    def _remember(self, obs: Observation) -> None:
        self.last_objects = {}
        self.step = obs.step
        for dx, dy in view_offsets():
            cell = (self.pos[0] + dx, self.pos[1] + dy)
            self.seen_at[cell] = obs.step
            name = obs.view.get((dx, dy), "edge")  # cells past the world's border are absent
            self.plants.discard(cell)
            self.cows.pop(cell, None)
            if name in MATERIALS or name == "edge":
                self.map[cell] = name
            else:
                self.last_objects[cell] = name
                if self.map.get(cell) not in WALKABLE | {"water", "lava"}:
                    self.map[cell] = GROUND_UNDER.get(name, self.map.get(cell, "grass"))
                if name in PLANTS:
                    self.plants.add(cell)
                if name == "cow":
                    self.cows[cell] = obs.step
                if name == "zombie":
                    self.zombie_seen_step = obs.step
        if self.map.get(self.pos) not in WALKABLE:
            self.map[self.pos] = "grass"  # we stand on it, so it is walkable
        self.objects = self.last_objects

    # -- looking things up ---------------------------------------------------------------
    def name_at(self, cell) -> str | None:
        return self.objects.get(cell) or self.map.get(cell)

    def front(self):
        return add(self.pos, self.facing)

    def enterable(self, cell) -> bool:
        return self.map.get(cell) in WALKABLE and cell not in self.objects

    def known(self, name: str) -> list[tuple[int, int]]:
        cells = [c for c, n in self.objects.items() if n == name] if name in CREATURES | PLANTS else \
            [c for c, n in self.map.items() if n == name]
        return sorted(cells, key=lambda c: manhattan(c, self.pos))

    def has(self, item: str, amount: int = 1) -> bool:
        return self.inventory.get(item, 0) >= amount

    def near_stations(self, pos=None) -> set[str]:
        """Stations in the 3x3 area around `pos` (what `make_*` checks)."""
        pos = pos or self.pos
        return {self.map.get((pos[0] + dx, pos[1] + dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}

    def where(self, cell) -> str:
        rel = sub(cell, self.pos)
        return offset_text(*rel) or "here"

    def hostile_within(self, distance: int) -> bool:
        return any(n in HOSTILE and manhattan(c, self.pos) <= distance for c, n in self.objects.items())
