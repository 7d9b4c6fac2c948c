"""`builtin:expert` — a scripted Crafter teacher that plays from the observation alone: what it wants next.

Three files, one idea each: what it knows of the world (`expert_memory`: localisation and the map it
remembers), how it moves and searches (`expert_moves`, on `grid`), and here the plan. Each turn it
walks a prioritized table of subgoals (`ExpertAgent.SUBGOALS`) and takes the first that yields a plan:

    sleeping → fight → drink to full at the water → urgent drink/food (no long walks in the dark)
    → cheap wins (a new achievement one action away, the first sapling, one short nap for wake_up)
    → shelter at dusk, at night and when hurt (walled in till no hostile is in view) → nearby drink,
    cow, ripe plant → coal/iron/diamond a few steps away → craft → wood → table → sapling → stone →
    place_stone → furnace → coal → iron → diamond → top up drink/food → explore

Hungry or thirsty with nothing known, it heads for ground it has not seen (for cows: not lately).

Recipe costs come from `crafter.constants` at run time. Of a plan it sends only the prefix whose
every outcome is predictable and safe (`Moves.safe_prefix`).
"""
from __future__ import annotations

from crafter import constants

from synth_qwen.expert_memory import COLLECT, PLACE, WorldMemory, uses_met
from synth_qwen.expert_moves import Moves
from synth_qwen.grid import MOVE_FOR, SEARCH_ORDER, VIEW_WIDTH, WALKABLE, add, manhattan, sub
from synth_qwen.observation import Observation

MAKE = constants.make
ITEM_MAX = {name: info["max"] for name, info in constants.items.items()}
TOOLS = ("wood_pickaxe", "wood_sword", "stone_pickaxe", "stone_sword", "iron_pickaxe", "iron_sword")

STONE_RESERVE = 9        # stone is cheap once you can mine: keep the pocket full for shelters
SAPLING_TRIES = 40       # `do`s on grass (10 % each: 98 % find one) before giving up on a sapling
NEAR = 12                # a station farther than this (in steps) is not worth walking back to
WAKE_UP_TRIES = 2        # a nap woken by damage earns nothing; don't keep trying in the open
NAP_ENERGY = 7           # a nap in the open lasts ~11 steps per missing energy point: only short ones
ZOMBIE_QUIET_STEPS = 60  # a zombie hits a sleeper for 7: nap only where none was seen lately
URGENT = 4               # drink or food at or below this comes before everything but a fight
HURT = 4                 # health at or below this: wall in and rest (a zombie hits for 2, an arrow for 2)
HEALED = 8               # ... until it is back to this
NIGHT_HEALTH = 3         # with more health than this, a hungry or thirsty player stays walled in until morning
DUSK = 0.5               # falling daylight under this: wall in before the zombies come
MORNING = 0.6            # daylight at which a sheltered player walks out (zombies linger at dawn)
ORE_NEAR_STATES = 300    # search budget that makes an ore "close by" (about 10 steps)
COW_STALE = 60           # cows wander: ground not seen for this many steps may hold one again
NEAR_HOSTILE = 6         # a hostile this close (and no shelter around us): send at most 2 actions


class ExpertAgent:
    """One instance per episode: `act(obs)` -> (1..max_actions action names, reasoning)."""

    def __init__(self, max_actions: int, seed: int = 0):
        if max_actions < 1:
            raise ValueError("max_actions must be >= 1")
        self.max_actions = max_actions
        self.world = WorldMemory()
        self.moves = Moves(self.world, seed)
        self.obs: Observation | None = None
        self.sapling_tries = 0
        self.wake_up_tries = 0
        self.shelter: tuple | None = None
        self.shelter_fails = 0
        self.last_daylight = 1.0
        self.wood_target = 0  # wood we set out to collect

    # -- the turn ------------------------------------------------------------------------
    def act(self, obs: Observation) -> tuple[list[str], str]:
        self.obs = obs
        self.world.update(obs)
        actions, reason = self._plan()
        self.last_daylight = obs.daylight
        self.world.moved(actions)
        return actions, reason

    def _plan(self) -> tuple[list[str], str]:
        for method in self.SUBGOALS:
            plan = method(self)
            if plan:
                actions, reason = plan
                limit = 2 if self.world.hostile_within(NEAR_HOSTILE) and not self._inside() else self.max_actions
                return self.moves.safe_prefix(actions[:limit])[: self.max_actions] or ["noop"], reason
        return ["noop"], "subgoal: wait, nothing to do"

    def _night_wait(self) -> bool:
        """Hunger costs a health point every 16 steps or so (30 asleep); zombies in the dark cost 2 a
        blow, 7 to a sleeper: with health to spare, hunger waits for the morning."""
        return self.obs.daylight < MORNING and self.obs.vitals["health"] > NIGHT_HEALTH

    def _dusk(self) -> bool:
        return self.obs.daylight < DUSK and self.obs.daylight < self.last_daylight

    def executed(self, actions: list[str], position: tuple[int, int] | None = None) -> None:
        """Another player (a relabelled student) took this turn: memory follows its actions, not our
        plan. With `position` (where it now stands relative to the episode's start, which a replay
        knows) no dead reckoning is needed; a student's moves are far less predictable than ours."""
        self.world.moved(actions, position)

    # =====================================================================================
    # Subgoals, in priority order. Each returns (actions, reasoning) or None to pass.

    def _while_sleeping(self):
        # Actions are ignored while asleep; noops pass the time cheaply.
        if self.obs.sleeping:
            return ["noop"] * self.max_actions, "subgoal: sleep until energy is full (wake_up)"
        return None

    def _fight(self):
        """Zombies and skeletons hurt; hit the adjacent one (and earn defeat_*)."""
        threats = [(manhattan(c, self.world.pos), c, n) for c, n in self.world.objects.items()
                   if n in ("zombie", "skeleton")]
        if not threats:
            return None
        dist, cell, name = min(threats)
        if dist == 1:
            d = sub(cell, self.world.pos)
            turn = [] if d == self.world.facing else [MOVE_FOR[d]]
            return turn + ["do", "do"], f"subgoal: defeat {name}, {self.world.where(cell)}"
        if dist == 2 and name == "zombie" and self.obs.vitals["health"] >= 6:
            # step next to it (it comes toward us anyway) so we strike first
            for d in SEARCH_ORDER:
                step = add(self.world.pos, d)
                if manhattan(step, cell) == 1 and self.world.enterable(step):
                    return [MOVE_FOR[d]], f"subgoal: defeat zombie, {self.world.where(cell)}"
        if name == "skeleton" and dist <= 4 and self.obs.vitals["health"] >= 4:
            # it shoots from range and backs off; close in rather than take arrows
            return self.moves.go_do("skeleton", "defeat skeleton", 2, max_states=200)
        return None

    def _keep_drinking(self):
        """At the water already: drink to full (one sip a turn would walk off at 5 and come back at 4)."""
        if self.world.name_at(self.world.front()) == "water" and self.obs.vitals["drink"] < ITEM_MAX["drink"]:
            return ["do"] * self.max_actions, "subgoal: collect drink, drink to full"
        return None

    def _urgent_needs(self):
        vitals = self.obs.vitals
        if self._inside() and (min(vitals["drink"], vitals["food"]) > URGENT - 2 or self._night_wait()):
            return None  # a little thirst is better than the night outside
        if vitals["drink"] <= URGENT:
            plan = self._drink()
            if plan:
                return plan
        if vitals["food"] <= URGENT:
            plan = self._eat()
            if plan:
                return plan
        if (self.obs.is_night or self._dusk()) and self._night_wait():
            return None  # no long walks for food in the dark: the shelter first
        if vitals["food"] <= URGENT:
            plan = self._find_cow()
            if plan:
                return plan
        if self._inside() and min(vitals["drink"], vitals["food"]) <= URGENT - 2:
            return self.moves.dig_out()
        if min(vitals["drink"], vitals["food"]) <= URGENT - 1 or vitals["food"] <= URGENT < vitals["drink"]:
            want = "water" if vitals["drink"] <= vitals["food"] else "cows"
            actions, reason = (self.moves.explore_frontier(None if want == "water" else COW_STALE)
                               or self.moves.explore())
            return actions, reason.replace("explore", f"explore for {want}")
        return None

    def _find_cow(self):
        """No cow in sight: walk back to where one was seen last (cows wander slowly)."""
        recent = sorted(self.world.cows, key=lambda c: (-self.world.cows[c], manhattan(c, self.world.pos)))
        for cell in recent[:3]:
            path = self.moves.search(lambda pos, facing: manhattan(pos, cell) <= 1, 12000)
            if path:
                return path, f"subgoal: find a cow, one was seen {self.world.where(cell)}"
        return None

    def _drink(self, max_states: int = 12000):
        hits = max(1, min(self.max_actions, ITEM_MAX["drink"] - self.obs.vitals["drink"]))
        return self.moves.go_do("water", "collect drink", hits, max_states)

    def _eat(self, max_states: int = 12000):
        if self.world.known("ripe plant"):
            plan = self.moves.go_do("ripe plant", "eat plant", 1, max_states)
            if plan:
                return plan
        return self.moves.go_do("cow", "eat cow", 3, max_states)

    # -- night: wall in with stone, then sleep -------------------------------------------
    def _shelter(self):
        vitals = self.obs.vitals
        tired = vitals["energy"] <= 3
        hurt = vitals["health"] <= HURT or (self._inside() and vitals["health"] < HEALED)
        # Zombies gather round a shelter in the night and hit the moment it opens: stay in till they go.
        dark = self.obs.is_night or self._dusk() or (self._inside() and (
            self.obs.daylight < MORNING or self.world.hostile_within(VIEW_WIDTH)))
        starving = min(vitals["drink"], vitals["food"]) <= URGENT - 2 and not (dark and self._night_wait())
        if starving or not (dark or tired or hurt):
            self.shelter = None
            return None
        if not self._inside():  # sleeping only halves hunger and thirst: fill up first
            plan = (vitals["drink"] <= 6 and self._drink(max_states=5000)) or \
                   (vitals["food"] <= 6 and self.moves.go_do("cow", "eat cow", 3, max_states=2000))
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
        open_ring = [c for c in ring if self.world.map.get(c) in WALKABLE]
        if not open_ring and self.world.pos in pocket:
            if vitals["energy"] < ITEM_MAX["energy"]:
                return ["sleep"] * self.max_actions, "subgoal: sleep, walled in with stone"
            return ["noop"] * self.max_actions, "subgoal: wait for daylight, walled in"
        if not self.world.has("stone", len(open_ring)):
            self.shelter = None
            return None
        # Block every ring cell but the exit first; the exit is closed from inside, last.
        todo = [c for c in open_ring if c != exit_cell] or [exit_cell]
        if todo == [exit_cell]:
            path = self.moves.search(lambda pos, facing: pos in pocket and add(pos, facing) == exit_cell
                                and exit_cell not in self.world.objects, 3000)
            plan = None if path is None else (path + ["place_stone"], "subgoal: wall in for the night, close the entrance")
        else:
            plan = self.moves.go_place("place_stone", "wall in for the night", where=lambda c: c in todo)
        if plan is None:
            self.shelter_fails += 1
        return plan

    def _inside(self) -> bool:
        return (self.shelter is not None and self.world.pos in self.shelter[0]
                and not any(self.world.map.get(c) in WALKABLE for c in self.shelter[1]))

    def _choose_shelter(self):
        """A two-cell pocket {Q, S} near us whose ring of 6 cells we can close with the stone we
        carry. One cell cannot be closed: the player faces an open cell only by walking, and the
        cell walked from stays open; from S, a step back into Q faces the last opening."""
        reachable = self.moves.reachable(400)
        best = None
        for q, dist in reachable.items():
            for e in SEARCH_ORDER:
                s = sub(q, e)
                if s not in reachable:
                    continue
                g = (e[1], e[0])
                ring = [add(q, g), sub(q, g), add(s, g), sub(s, g), sub(s, e), add(q, e)]
                if any(self.world.map.get(c) is None for c in ring):
                    continue
                open_ring = [c for c in ring if self.world.map.get(c) in WALKABLE]
                ends = [c for c in (add(q, e), sub(s, e)) if c in open_ring]
                if not ends or not self.world.has("stone", len(open_ring)):
                    continue
                cost = 4 * len(open_ring) + dist
                if best is None or cost < best[0]:
                    best = (cost, ({q, s}, ring, ends[0]))
        return best and best[1]

    def _cheap_wins(self):
        """A new achievement one action away (the observation's `ready` list): take it now; and
        plant the first sapling. Sleep starts only below full energy (about step 31 on) and pays
        wake_up ~12 steps later; damage wakes the player without it, and a zombie hits a sleeper
        for 7 (2 awake), so only by day where no zombie was seen lately."""
        vitals = self.obs.vitals
        for action in self.obs.ready:
            if action != "sleep":
                return [action], f"subgoal: {action.replace('_', ' ')}, ready now"
            if (self.wake_up_tries < WAKE_UP_TRIES and not self.obs.is_night and vitals["energy"] >= NAP_ENERGY
                    and self.obs.step - self.world.zombie_seen_step > ZOMBIE_QUIET_STEPS
                    and not self.world.hostile_within(VIEW_WIDTH) and min(vitals["food"], vitals["drink"]) > URGENT):
                self.wake_up_tries += 1
                return ["sleep"], "subgoal: sleep once for wake_up"
        if self.world.has("sapling") and "place_plant" not in self.obs.achievements:
            return self.moves.go_place("place_plant", "place plant (sapling on grass)", max_states=200)
        return None

    def _opportunities(self):
        """Cheap wins right next to us: drink, a cow when hungry or never eaten, a ripe plant."""
        vitals = self.obs.vitals
        if vitals["drink"] <= 6 or "collect_drink" not in self.obs.achievements:
            plan = self._drink(max_states=150)
            if plan:
                return plan
        if vitals["food"] <= 6 or "eat_cow" not in self.obs.achievements:
            plan = self.moves.go_do("cow", "eat cow", 3, max_states=150 if vitals["food"] > 6 else 2000)
            if plan:
                return plan
        if self.world.known("ripe plant"):
            return self.moves.go_do("ripe plant", "eat plant", 1, max_states=1500)
        return None

    def _ore_nearby(self):
        """Coal, iron or a diamond a few steps away that we can mine and still want: mine it now
        (coal and iron sit in the stone we mine anyway; later the walk back costs more)."""
        for name in ("diamond", "iron", "coal"):
            if self._ore_wanted(name) and uses_met(self.world.inventory, COLLECT[name]["require"]) \
                    and self.world.known(name):
                plan = self.moves.go_do(name, f"collect {name}, close by", 1, max_states=ORE_NEAR_STATES)
                if plan:
                    return plan
        return None

    def _missing_tools(self) -> list[str]:
        return [tool for tool in TOOLS if not self.world.has(tool)]

    def _craft(self):
        """Make every tool whose ingredients we hold, at the stations it needs."""
        for tool in self._missing_tools():
            recipe = MAKE[tool]
            if not uses_met(self.world.inventory, recipe["uses"]):
                continue
            needed = set(recipe["nearby"])
            if needed <= self.world.near_stations():
                return [f"make_{tool}"], f"subgoal: make {tool}, at the {' and '.join(sorted(needed))}"
            path = self.moves.search(lambda pos, facing: needed <= self.world.near_stations(pos), 1500)
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
        if "table" in self.world.near_stations():
            return True
        path = self.moves.search(lambda pos, facing: "table" in self.world.near_stations(pos), 1500)
        return path is not None and len(path) <= NEAR

    def _wood_needed(self) -> int:
        """Wood for the table (unless one is near) plus one per tool still to make."""
        need = sum(MAKE[tool]["uses"].get("wood", 0) for tool in self._missing_tools())
        if not self._table_near():
            need += PLACE["table"]["uses"].get("wood", 0)
        return min(need, ITEM_MAX["wood"])

    def _collect_wood(self):
        # The need is kept until met: whether the table counts as near flips as we walk, and a need
        # that flips each step sends us to the tree and back forever.
        self.wood_target = max(self.wood_target, self._wood_needed())
        if self.world.inventory.get("wood", 0) >= self.wood_target:
            self.wood_target = 0
            return None
        return self.moves.go_do("tree", "collect wood", 1)

    def _place_table(self):
        cost = PLACE["table"]["uses"]
        spare = {k: v + (1 if k == "wood" else 0) for k, v in cost.items()}  # keep one for a pickaxe
        if self._table_near() or not uses_met(self.world.inventory, spare if not self.world.has("wood_pickaxe") else cost):
            return None
        return self.moves.go_place("place_table", "place table")

    def _place_furnace(self):
        if "place_furnace" in self.obs.achievements and self._furnace_near():
            return None
        if not uses_met(self.world.inventory, PLACE["furnace"]["uses"]) or not self._table_near():
            return None
        # put it where one standing cell sees both, so iron tools can be made there
        if "table" in self.world.near_stations():
            plan = self.moves.go_place("place_furnace", "place furnace next to the table",
                                  where=lambda c: True, max_states=60)
            if plan and len(plan[0]) == 1:
                return plan
        path = self.moves.search(lambda pos, facing: "table" in self.world.near_stations(pos)
                            and self.world.map.get(add(pos, facing)) in PLACE["furnace"]["where"]
                            and add(pos, facing) not in self.world.objects, 1500)
        if path is None:
            return None
        return path + ["place_furnace"], "subgoal: place furnace, next to the table"

    def _furnace_near(self) -> bool:
        path = self.moves.search(lambda pos, facing: {"table", "furnace"} <= self.world.near_stations(pos), 1500)
        return path is not None and len(path) <= NEAR

    def _sapling(self):
        """`do` on grass gives a sapling 10 % of the time; plant it right away."""
        if self.world.has("sapling"):
            return self.moves.go_place("place_plant", "place plant (sapling on grass)", max_states=500)
        if "collect_sapling" in self.obs.achievements or self.sapling_tries >= SAPLING_TRIES:
            return None
        if not self.world.has("wood_pickaxe"):
            return None
        plan = self.moves.go_face(lambda c: self.world.map.get(c) == "grass" and c not in self.world.objects, 300)
        if plan is None:
            return None
        self.sapling_tries += self.max_actions  # one turn sends this many `do`s
        return plan + ["do"] * self.max_actions, "subgoal: collect sapling, search the grass"

    def _stone_needed(self) -> int:
        need = sum(MAKE[t]["uses"].get("stone", 0) for t in self._missing_tools())
        if "place_furnace" not in self.obs.achievements or not self._furnace_near():
            need += PLACE["furnace"]["uses"].get("stone", 0)
        return need

    def _collect_stone(self):
        if not uses_met(self.world.inventory, COLLECT["stone"]["require"]):
            return None
        wanted = self._stone_needed() + (1 if "place_stone" not in self.obs.achievements else 0)
        have = self.world.inventory.get("stone", 0)
        if have >= min(ITEM_MAX["stone"], max(wanted, 0)):
            # top up for shelters when stone is close
            if have < STONE_RESERVE:
                return self.moves.go_do("stone", "collect stone (reserve for walls)", 1, max_states=200)
            return None
        return self._mine("stone", "collect stone")

    def _place_stone(self):
        if "place_stone" in self.obs.achievements or not self.world.has("stone"):
            return None
        return self.moves.go_place("place_stone", "place stone", max_states=300)

    def _mine(self, name: str, reason: str):
        """Go mine `name`; when it is walled in by stone, tunnel toward it."""
        if not uses_met(self.world.inventory, COLLECT[name]["require"]) or not self.world.known(name):
            return None
        plan = self.moves.go_do(name, reason, 1)
        if plan or name == "stone" or not uses_met(self.world.inventory, COLLECT["stone"]["require"]):
            return plan
        target = self.world.known(name)[0]
        if manhattan(target, self.world.pos) > 20:
            return None
        # dig: the stone cell nearest to the target that we can face
        path = self.moves.go_face(lambda c: self.world.map.get(c) == "stone"
                             and manhattan(c, target) < manhattan(self.world.pos, target), 2000)
        if path is None:
            return None
        return path + ["do"], f"subgoal: {reason}, tunnel toward {name} {self.world.where(target)}"

    def _ore_wanted(self, name: str) -> bool:
        """Fewer of `name` than the missing tools use, or none collected yet (its achievement)."""
        needed = sum(MAKE[t]["uses"].get(name, 0) for t in self._missing_tools())
        first = 1 if f"collect_{name}" not in self.obs.achievements else 0
        return self.world.inventory.get(name, 0) < max(needed, first)

    def _collect_coal(self):
        return self._mine("coal", "collect coal") if self._ore_wanted("coal") else None

    def _collect_iron(self):
        return self._mine("iron", "collect iron") if self._ore_wanted("iron") else None

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
            plan = self.moves.go_do("cow", "eat cow", 3, max_states=600)
            if plan:
                return plan
        return None

    def _explore(self):
        return self.moves.explore()

    SUBGOALS = (
        _while_sleeping,
        _fight,
        _keep_drinking,
        _urgent_needs,
        _cheap_wins,
        _shelter,
        _opportunities,
        _ore_nearby,
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
