"""`builtin:expert` — a scripted Crafter teacher that plays from the observation alone.

The agent sees what `Observation` shows (the 9x7 view, vitals, inventory, facing, daylight) and
remembers earlier views of the episode in a map it builds by dead reckoning. Each turn it walks a
prioritized table of subgoals (`ExpertAgent.SUBGOALS`) and takes the first that yields a plan:

    sleeping → fight → urgent drink/food → cheap wins (a new achievement one action away, the
    first sapling, one nap for wake_up) → shelter at night → craft → wood → table → sapling →
    stone → place_stone → furnace → coal → iron → diamond → top up drink/food → eat plant → explore

Recipe costs come from `crafter.constants` at run time. Movement rules it relies on (objects.py):
a move always turns the player and only moves onto grass/sand/path with no creature (or lava,
which kills — so it never moves toward lava or unknown cells); `do` acts on the faced cell; the
player updates before every creature in a step, so the first action of a turn is fully
predictable and later ones only while no creature can reach the path in time.
"""
from __future__ import annotations

import math
import random
from collections import deque

from crafter import constants

from synth_qwen.grid import (DIRECTION_OF, MOVE_FOR, SEARCH_ORDER, VIEW_WIDTH, WALKABLE, add, manhattan, offset_text,
                             shortest_moves, sub, view_offsets)
from synth_qwen.observation import Observation

# ---------------------------------------------------------------------------------------
# Game data, read from crafter's own tables

MATERIALS = frozenset(constants.materials)
CREATURES = frozenset({"cow", "zombie", "skeleton", "arrow"})
PLANTS = frozenset({"sapling", "ripe plant"})
HOSTILE = frozenset({"zombie", "skeleton", "arrow"})
COLLECT = constants.collect
PLACE = constants.place
MAKE = constants.make
ITEM_MAX = {name: info["max"] for name, info in constants.items.items()}
TOOLS = ("wood_pickaxe", "wood_sword", "stone_pickaxe", "stone_sword", "iron_pickaxe", "iron_sword")
# Material under a creature we have never seen uncovered (where each kind lives).
GROUND_UNDER = {"cow": "grass", "zombie": "grass", "sapling": "grass", "ripe plant": "grass",
                "skeleton": "path"}

STONE_RESERVE = 9        # stone is cheap once you can mine: keep the pocket full for shelters
SAPLING_TRIES = 8        # turns of `do` on grass (10 % each) before giving up on a sapling
NEAR = 12                # a station farther than this (in steps) is not worth walking back to
WAKE_UP_TRIES = 2        # a nap woken by damage earns nothing; don't keep trying in the open
ZOMBIE_QUIET_STEPS = 60  # a zombie hits a sleeper for 7: nap only where none was seen lately
URGENT = 4               # drink or food at or below this comes before everything but a fight
MORNING = 0.6            # daylight at which a sheltered player walks out (zombies linger at dawn)


def uses_met(inventory: dict, uses: dict) -> bool:
    return all(inventory.get(item, 0) >= amount for item, amount in uses.items())


class ExpertAgent:
    """One instance per episode: `act(obs)` -> (1..max_actions action names, reasoning)."""

    def __init__(self, max_actions: int, seed: int = 0):
        if max_actions < 1:
            raise ValueError("max_actions must be >= 1")
        self.max_actions = max_actions
        self.random = random.Random(seed)
        self.pos = (0, 0)                  # relative to where the episode started
        self.facing = (0, 1)
        self.map: dict[tuple[int, int], str] = {}     # position -> material (or "edge")
        self.objects: dict[tuple[int, int], str] = {}  # what stands where, current view only
        self.plants: set[tuple[int, int]] = set()      # saplings we know of, remembered
        self.cows: dict[tuple[int, int], int] = {}     # where cows were last seen -> step
        self.last_actions: list[str] = []
        self.last_objects: dict[tuple[int, int], str] = {}
        self.inventory: dict[str, int] = {}
        self.obs: Observation | None = None
        self.explore_goal: tuple[int, int] | None = None
        self.explore_stuck = 0
        self.sapling_tries = 0
        self.wake_up_tries = 0
        self.zombie_seen_step = -ZOMBIE_QUIET_STEPS - 1
        self.shelter: tuple | None = None
        self.shelter_fails = 0

    # -- the turn ------------------------------------------------------------------------
    def act(self, obs: Observation) -> tuple[list[str], str]:
        self.obs = obs
        self.inventory = dict(obs.inventory)
        self._localize(obs)
        self._remember(obs)
        for method in self.SUBGOALS:
            plan = method(self)
            if plan:
                actions, reason = plan
                actions = self._safe_prefix(actions)[: self.max_actions] or ["noop"]
                self.last_actions = actions
                return actions, reason
        self.last_actions = ["noop"]
        return ["noop"], "subgoal: wait, nothing to do"

    def executed(self, actions: list[str], position: tuple[int, int] | None = None) -> None:
        """Another player (a relabelled student) took this turn: memory follows its actions, not our
        plan. With `position` (where it now stands relative to the episode's start, which a replay
        knows) no dead reckoning is needed; a student's moves are far less predictable than ours."""
        if position is None:
            self.last_actions = list(actions)
        else:
            self.pos, self.last_actions = tuple(position), []

    # -- memory: where am I, what is where ----------------------------------------------
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

    def _remember(self, obs: Observation) -> None:
        self.last_objects = {}
        for dx, dy in view_offsets():
            cell = (self.pos[0] + dx, self.pos[1] + dy)
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

    # -- planning ------------------------------------------------------------------------
    def _search(self, goal, max_states: int = 5000, through=None):
        """The move actions that reach a state where goal(pos, facing) holds, over the remembered map
        (grid.shortest_moves: a blocked move only turns; lava and unknown cells are never tried).
        `through`: cells treated as enterable even if blocked now."""
        def enterable(cell) -> bool:
            return self.enterable(cell) or (through is not None and cell in through)
        return shortest_moves(self.pos, self.facing, self.map.get, enterable, goal, max_states)

    def _go_face(self, wanted, max_states: int = 5000):
        """Moves that end facing a cell for which wanted(cell) holds, or None."""
        return self._search(lambda pos, facing: wanted(add(pos, facing)), max_states)

    def _go_do(self, name: str, reason: str, hits: int = 1, max_states: int = 5000):
        """Walk to the nearest `name` (material or creature), face it and `do` it."""
        if not self.known(name):
            return None
        path = self._go_face(lambda cell: self.name_at(cell) == name, max_states)
        if path is None:
            return None
        target = self._faced_after(path)
        return path + ["do"] * hits, f"subgoal: {reason}, {name} {self.where(target)}"

    def _go_place(self, action: str, reason: str, where=None, max_states: int = 3000):
        """Face a cell where `action` can put its thing (and where(cell) allows it), then place."""
        allowed = PLACE[action[len("place_"):]]["where"]

        def ok(cell):
            return (self.map.get(cell) in allowed and cell not in self.objects
                    and (where is None or where(cell)))
        path = self._go_face(ok, max_states)
        if path is None:
            return None
        return path + [action], f"subgoal: {reason}, {self.where(self._faced_after(path))}"

    def _faced_after(self, path):
        pos, facing = self.pos, self.facing
        for action in path:
            d = DIRECTION_OF[action]
            facing = d
            if self.enterable(add(pos, d)):
                pos = add(pos, d)
        return add(pos, facing)

    def _safe_prefix(self, actions: list[str]) -> list[str]:
        """Keep only the actions whose every possible outcome is safe and predictable: no way
        onto lava or unknown ground, and no creature able to step into a cell before we do."""
        limit = 2 if self._hostile_within(6) and not self._inside() else self.max_actions
        states = [(self.pos, self.facing)]
        kept = []
        for index, action in enumerate(actions[:limit]):
            if action in DIRECTION_OF and index > 0:
                d = DIRECTION_OF[action]
                risky = False
                for pos, _ in states:
                    target = add(pos, d)
                    if self.map.get(target) in (None, "lava"):
                        risky = True
                    if any(n in CREATURES and manhattan(c, target) <= index
                           for c, n in self.objects.items()):
                        risky = True
                if risky:
                    break
                states = [s for pos, _ in states for s in ((add(pos, d), d), (pos, d))]
            elif action in DIRECTION_OF:
                d = DIRECTION_OF[action]
                target = add(self.pos, d)
                states = [((target if self.enterable(target) else self.pos), d)]
            kept.append(action)
        return kept

    # =====================================================================================
    # Subgoals, in priority order. Each returns (actions, reasoning) or None to pass.

    def _while_sleeping(self):
        # Actions are ignored while asleep; noops pass the time cheaply.
        if self.obs.sleeping:
            return ["noop"] * self.max_actions, "subgoal: sleep until energy is full (wake_up)"
        return None

    def _fight(self):
        """Zombies and skeletons hurt; hit the adjacent one (and earn defeat_*)."""
        threats = [(manhattan(c, self.pos), c, n) for c, n in self.objects.items()
                   if n in ("zombie", "skeleton")]
        if not threats:
            return None
        dist, cell, name = min(threats)
        if dist == 1:
            d = sub(cell, self.pos)
            turn = [] if d == self.facing else [MOVE_FOR[d]]
            return turn + ["do", "do"], f"subgoal: defeat {name}, {self.where(cell)}"
        if dist == 2 and name == "zombie" and self.obs.vitals["health"] >= 6:
            # step next to it (it comes toward us anyway) so we strike first
            for d in SEARCH_ORDER:
                step = add(self.pos, d)
                if manhattan(step, cell) == 1 and self.enterable(step):
                    return [MOVE_FOR[d]], f"subgoal: defeat zombie, {self.where(cell)}"
        if name == "skeleton" and dist <= 4 and self.obs.vitals["health"] >= 4:
            # it shoots from range and backs off; close in rather than take arrows
            return self._go_do("skeleton", "defeat skeleton", 2, max_states=200)
        return None

    def _urgent_needs(self):
        vitals = self.obs.vitals
        if self._inside() and min(vitals["drink"], vitals["food"]) > URGENT - 2:
            return None  # a little thirst is better than the night outside
        if vitals["drink"] <= URGENT:
            plan = self._drink()
            if plan:
                return plan
        if vitals["food"] <= URGENT:
            plan = self._eat()
            if plan:
                return plan
            plan = self._find_cow()
            if plan:
                return plan
        if self._inside() and min(vitals["drink"], vitals["food"]) <= URGENT - 2:
            return self._dig_out()
        if min(vitals["drink"], vitals["food"]) <= URGENT - 1:
            want = "water" if vitals["drink"] <= vitals["food"] else "cows"
            actions, reason = self._explore()
            return actions, reason.replace("explore", f"explore for {want}")
        return None

    def _find_cow(self):
        """No cow in sight: walk back to where one was seen last (cows wander slowly)."""
        recent = sorted(self.cows, key=lambda c: (-self.cows[c], manhattan(c, self.pos)))
        for cell in recent[:3]:
            path = self._search(lambda pos, facing: manhattan(pos, cell) <= 1, 12000)
            if path:
                return path, f"subgoal: find a cow, one was seen {self.where(cell)}"
        return None

    def _drink(self, max_states: int = 12000):
        hits = max(1, min(self.max_actions, ITEM_MAX["drink"] - self.obs.vitals["drink"]))
        return self._go_do("water", "collect drink", hits, max_states)

    def _eat(self, max_states: int = 12000):
        if self.known("ripe plant"):
            plan = self._go_do("ripe plant", "eat plant", 1, max_states)
            if plan:
                return plan
        return self._go_do("cow", "eat cow", 3, max_states)

    # -- night: wall in with stone, then sleep -------------------------------------------
    def _shelter(self):
        vitals = self.obs.vitals
        tired = vitals["energy"] <= 3
        dark = self.obs.is_night or (self._inside() and self.obs.daylight < MORNING)
        starving = min(vitals["drink"], vitals["food"]) <= URGENT - 2
        if starving or not (dark or tired) or (vitals["energy"] >= ITEM_MAX["energy"] and not self._inside()):
            self.shelter = None
            return None
        if not self._inside():  # sleeping only halves hunger and thirst: fill up first
            plan = (vitals["drink"] <= 6 and self._drink(max_states=5000)) or \
                   (vitals["food"] <= 5 and self._go_do("cow", "eat cow", 3, max_states=2000))
            if plan:
                return plan
        if self.shelter is None or self.shelter_fails > 3:
            self.shelter = self._choose_shelter()
            self.shelter_fails = 0
        if self.shelter is None:
            if vitals["energy"] <= 1:
                return ["sleep"], "subgoal: sleep, exhausted, no shelter possible"
            return None
        pocket, ring, exit_cell = self.shelter
        open_ring = [c for c in ring if self.map.get(c) in WALKABLE]
        if not open_ring and self.pos in pocket:
            if vitals["energy"] < ITEM_MAX["energy"]:
                return ["sleep"] * self.max_actions, "subgoal: sleep, walled in with stone"
            return ["noop"] * self.max_actions, "subgoal: wait for daylight, walled in"
        if not self.has("stone", len(open_ring)):
            self.shelter = None
            return None
        # Block every ring cell but the exit first; the exit is closed from inside, last.
        todo = [c for c in open_ring if c != exit_cell] or [exit_cell]
        if todo == [exit_cell]:
            path = self._search(lambda pos, facing: pos in pocket and add(pos, facing) == exit_cell
                                and exit_cell not in self.objects, 3000)
            plan = None if path is None else (path + ["place_stone"], "subgoal: wall in for the night, close the entrance")
        else:
            plan = self._go_place("place_stone", "wall in for the night", where=lambda c: c in todo)
        if plan is None:
            self.shelter_fails += 1
        return plan

    def _hostile_within(self, distance: int) -> bool:
        return any(n in HOSTILE and manhattan(c, self.pos) <= distance for c, n in self.objects.items())

    def _inside(self) -> bool:
        return (self.shelter is not None and self.pos in self.shelter[0]
                and not any(self.map.get(c) in WALKABLE for c in self.shelter[1]))

    def _choose_shelter(self):
        """A two-cell pocket {Q, S} near us whose ring of 6 cells we can close with the stone we
        carry. One cell cannot be closed: the player faces an open cell only by walking, and the
        cell walked from stays open; from S, a step back into Q faces the last opening."""
        reachable = self._reachable(400)
        best = None
        for q, dist in reachable.items():
            for e in SEARCH_ORDER:
                s = sub(q, e)
                if s not in reachable:
                    continue
                g = (e[1], e[0])
                ring = [add(q, g), sub(q, g), add(s, g), sub(s, g), sub(s, e), add(q, e)]
                if any(self.map.get(c) is None for c in ring):
                    continue
                open_ring = [c for c in ring if self.map.get(c) in WALKABLE]
                ends = [c for c in (add(q, e), sub(s, e)) if c in open_ring]
                if not ends or not self.has("stone", len(open_ring)):
                    continue
                cost = 4 * len(open_ring) + dist
                if best is None or cost < best[0]:
                    best = (cost, ({q, s}, ring, ends[0]))
        return best and best[1]

    def _reachable(self, limit: int) -> dict:
        seen = {self.pos: 0}
        queue = deque([self.pos])
        while queue and len(seen) < limit:
            pos = queue.popleft()
            for d in SEARCH_ORDER:
                nxt = add(pos, d)
                if nxt not in seen and self.enterable(nxt):
                    seen[nxt] = seen[pos] + 1
                    queue.append(nxt)
        return seen

    # -- the tech tree -------------------------------------------------------------------
    def _cheap_wins(self):
        """A new achievement one action away (the observation's `ready` list): take it now; and
        plant the first sapling. Sleep starts only below full energy (about step 31 on) and pays
        wake_up ~12 steps later; damage wakes the player without it, and a zombie hits a sleeper
        for 7 (2 awake), so only by day where no zombie was seen lately."""
        vitals = self.obs.vitals
        for action in self.obs.ready:
            if action != "sleep":
                return [action], f"subgoal: {action.replace('_', ' ')}, ready now"
            if (self.wake_up_tries < WAKE_UP_TRIES and not self.obs.is_night
                    and self.obs.step - self.zombie_seen_step > ZOMBIE_QUIET_STEPS
                    and not self._hostile_within(VIEW_WIDTH) and min(vitals["food"], vitals["drink"]) > URGENT):
                self.wake_up_tries += 1
                return ["sleep"], "subgoal: sleep once for wake_up"
        if self.has("sapling") and "place_plant" not in self.obs.achievements:
            return self._go_place("place_plant", "place plant (sapling on grass)", max_states=200)
        return None

    def _opportunities(self):
        """Cheap wins right next to us: drink, a cow when hungry or never eaten, a ripe plant."""
        vitals = self.obs.vitals
        if vitals["drink"] <= 6 or "collect_drink" not in self.obs.achievements:
            plan = self._drink(max_states=150)
            if plan:
                return plan
        if vitals["food"] <= 6 or "eat_cow" not in self.obs.achievements:
            plan = self._go_do("cow", "eat cow", 3, max_states=150 if vitals["food"] > 6 else 600)
            if plan:
                return plan
        if self.known("ripe plant"):
            return self._go_do("ripe plant", "eat plant", 1, max_states=1500)
        return None

    def _missing_tools(self) -> list[str]:
        return [tool for tool in TOOLS if not self.has(tool)]

    def _craft(self):
        """Make every tool whose ingredients we hold, at the stations it needs."""
        for tool in self._missing_tools():
            recipe = MAKE[tool]
            if not uses_met(self.inventory, recipe["uses"]):
                continue
            needed = set(recipe["nearby"])
            if needed <= self.near_stations():
                return [f"make_{tool}"], f"subgoal: make {tool}, at the {' and '.join(sorted(needed))}"
            path = self._search(lambda pos, facing: needed <= self.near_stations(pos), 1500)
            if path is not None and len(path) <= NEAR:
                return path + [f"make_{tool}"], f"subgoal: make {tool}, walk to the {' and '.join(sorted(needed))}"
            if "table" in needed and not self._table_near():
                plan = self._place_table()
                if plan:
                    return plan
            if "furnace" in needed and self._table_near():
                plan = self._place_furnace()
                if plan:
                    return plan
        return None

    def _table_near(self) -> bool:
        if "table" in self.near_stations():
            return True
        path = self._search(lambda pos, facing: "table" in self.near_stations(pos), 1500)
        return path is not None and len(path) <= NEAR

    def _wood_needed(self) -> int:
        """Wood for the table (unless one is near) plus one per tool still to make."""
        need = sum(MAKE[tool]["uses"].get("wood", 0) for tool in self._missing_tools())
        if not self._table_near():
            need += PLACE["table"]["uses"].get("wood", 0)
        return min(need, ITEM_MAX["wood"])

    def _collect_wood(self):
        if self.inventory.get("wood", 0) >= self._wood_needed():
            return None
        return self._go_do("tree", "collect wood", 1)

    def _place_table(self):
        cost = PLACE["table"]["uses"]
        spare = {k: v + (1 if k == "wood" else 0) for k, v in cost.items()}  # keep one for a pickaxe
        if self._table_near() or not uses_met(self.inventory, spare if not self.has("wood_pickaxe") else cost):
            return None
        return self._go_place("place_table", "place table")

    def _place_furnace(self):
        if "place_furnace" in self.obs.achievements and self._furnace_near():
            return None
        if not uses_met(self.inventory, PLACE["furnace"]["uses"]) or not self._table_near():
            return None
        # put it where one standing cell sees both, so iron tools can be made there
        if "table" in self.near_stations():
            plan = self._go_place("place_furnace", "place furnace next to the table",
                                  where=lambda c: True, max_states=60)
            if plan and len(plan[0]) == 1:
                return plan
        path = self._search(lambda pos, facing: "table" in self.near_stations(pos)
                            and self.map.get(add(pos, facing)) in PLACE["furnace"]["where"]
                            and add(pos, facing) not in self.objects, 1500)
        if path is None:
            return None
        return path + ["place_furnace"], "subgoal: place furnace, next to the table"

    def _furnace_near(self) -> bool:
        path = self._search(lambda pos, facing: {"table", "furnace"} <= self.near_stations(pos), 1500)
        return path is not None and len(path) <= NEAR

    def _sapling(self):
        """`do` on grass gives a sapling 10 % of the time; plant it right away."""
        if self.has("sapling"):
            return self._go_place("place_plant", "place plant (sapling on grass)", max_states=500)
        if "collect_sapling" in self.obs.achievements or self.sapling_tries >= SAPLING_TRIES:
            return None
        if not self.has("wood_pickaxe"):
            return None
        plan = self._go_face(lambda c: self.map.get(c) == "grass" and c not in self.objects, 300)
        if plan is None:
            return None
        self.sapling_tries += 1
        return plan + ["do"] * self.max_actions, "subgoal: collect sapling, search the grass"

    def _stone_needed(self) -> int:
        need = sum(MAKE[t]["uses"].get("stone", 0) for t in self._missing_tools())
        if "place_furnace" not in self.obs.achievements or not self._furnace_near():
            need += PLACE["furnace"]["uses"].get("stone", 0)
        return need

    def _collect_stone(self):
        if not uses_met(self.inventory, COLLECT["stone"]["require"]):
            return None
        wanted = self._stone_needed() + (1 if "place_stone" not in self.obs.achievements else 0)
        have = self.inventory.get("stone", 0)
        if have >= min(ITEM_MAX["stone"], max(wanted, 0)):
            # top up for shelters when stone is close
            if have < STONE_RESERVE:
                return self._go_do("stone", "collect stone (reserve for walls)", 1, max_states=200)
            return None
        return self._mine("stone", "collect stone")

    def _place_stone(self):
        if "place_stone" in self.obs.achievements or not self.has("stone"):
            return None
        return self._go_place("place_stone", "place stone", max_states=300)

    def _mine(self, name: str, reason: str):
        """Go mine `name`; when it is walled in by stone, tunnel toward it."""
        if not uses_met(self.inventory, COLLECT[name]["require"]) or not self.known(name):
            return None
        plan = self._go_do(name, reason, 1)
        if plan or name == "stone" or not uses_met(self.inventory, COLLECT["stone"]["require"]):
            return plan
        target = self.known(name)[0]
        if manhattan(target, self.pos) > 20:
            return None
        # dig: the stone cell nearest to the target that we can face
        path = self._go_face(lambda c: self.map.get(c) == "stone"
                             and manhattan(c, target) < manhattan(self.pos, target), 2000)
        if path is None:
            return None
        return path + ["do"], f"subgoal: {reason}, tunnel toward {name} {self.where(target)}"

    def _collect_coal(self):
        coal_needed = sum(MAKE[t]["uses"].get("coal", 0) for t in self._missing_tools())
        if self.inventory.get("coal", 0) >= max(coal_needed, 1 if "collect_coal" not in self.obs.achievements else 0):
            return None
        return self._mine("coal", "collect coal")

    def _collect_iron(self):
        iron_needed = sum(MAKE[t]["uses"].get("iron", 0) for t in self._missing_tools())
        if self.inventory.get("iron", 0) >= max(iron_needed, 1 if "collect_iron" not in self.obs.achievements else 0):
            return None
        return self._mine("iron", "collect iron")

    def _collect_diamond(self):
        return self._mine("diamond", "collect diamond")

    def _top_up(self):
        """Nothing urgent: drink and eat to full while the chance is near."""
        vitals = self.obs.vitals
        if vitals["drink"] < ITEM_MAX["drink"] - 1:
            plan = self._drink(max_states=600)
            if plan:
                return plan
        if vitals["food"] < ITEM_MAX["food"] - 2:
            plan = self._go_do("cow", "eat cow", 3, max_states=600)
            if plan:
                return plan
        return None

    def _explore(self):
        """Head for a far point in a random direction; pick a new one when stuck."""
        reachable = self._reachable(3000)
        if len(reachable) <= 2:
            return self._dig_out()
        for _ in range(4):
            if self.explore_goal is None or manhattan(self.explore_goal, self.pos) < 4 or self.explore_stuck >= 3:
                angle = self.random.uniform(0, 2 * math.pi)
                self.explore_goal = (self.pos[0] + round(24 * math.cos(angle)),
                                     self.pos[1] + round(24 * math.sin(angle)))
                self.explore_stuck = 0
            goal = self.explore_goal
            best = min(reachable, key=lambda c: (manhattan(c, goal) + 0.3 * reachable[c], c))
            if best != self.pos:
                path = self._search(lambda pos, facing: pos == best, 8000)
                if path:
                    self.explore_stuck = 0 if manhattan(best, goal) < manhattan(self.pos, goal) else self.explore_stuck + 1
                    return path, f"subgoal: explore, heading {self.where(goal)}"
            self.explore_stuck = 3
        return self._dig_out()

    def _dig_out(self):
        """Walled in (a shelter, a tunnel): mine a way out, or at least turn and look."""
        if uses_met(self.inventory, COLLECT["stone"]["require"]):
            path = self._go_face(lambda c: self.map.get(c) in ("stone", "coal", "iron")
                                 and uses_met(self.inventory, COLLECT[self.map[c]]["require"]), 40)
            if path is not None:
                return path + ["do"], "subgoal: dig out, mine the wall"
        d = self.random.choice(SEARCH_ORDER)
        return [MOVE_FOR[d]], "subgoal: explore, no known way, try a direction"

    SUBGOALS = (
        _while_sleeping,
        _fight,
        _urgent_needs,
        _cheap_wins,
        _shelter,
        _opportunities,
        _craft,
        _collect_wood,
        _place_table,
        _sapling,
        _collect_stone,
        _place_stone,
        _place_furnace,
        _collect_coal,
        _collect_iron,
        _collect_diamond,
        _top_up,
        _explore,
    )
