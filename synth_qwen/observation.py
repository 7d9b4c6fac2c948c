"""What the agent sees: the `Observation` of the world around the player, as data (for the expert)
and as the documented text (docs/modules.md, the Crafter layer) that models read. Built from the world, not the image."""
from __future__ import annotations

from dataclasses import dataclass, field

from crafter import constants, objects

from synth_qwen.crafter_env import ACHIEVEMENT_OF, ACHIEVEMENTS, ACTIONS, VITALS, CrafterEnv
from synth_qwen.grid import COMPASS, WALKABLE, WORLD_SIZE, add, manhattan, offset_text, shortest_moves, view_offsets
from synth_qwen.settings import DEFAULT_ACTIONS_PER_TURN

# Things worth walking to and facing; the observation shows the route to the nearest one.
TARGETS = ("tree", "water", "stone", "coal", "iron", "diamond", "cow", "zombie", "skeleton",
           "ripe plant", "sapling")
HINT_LENGTH = DEFAULT_ACTIONS_PER_TURN  # the route shown per target: at most one default turn of actions
NIGHT_BELOW = 0.35  # daylight under which the text says "night"


@dataclass(frozen=True)
class Observation:
    step: int
    daylight: float
    vitals: dict[str, int]
    inventory: dict[str, int]
    achievements: tuple[str, ...]
    facing: tuple[int, int]
    sleeping: bool
    view: dict[tuple[int, int], str] = field(repr=False)  # (dx east, dy south) -> what is there

    @property
    def is_night(self) -> bool:
        return self.daylight < NIGHT_BELOW

    @property
    def in_front(self) -> str:
        return self.view.get(self.facing, "edge of the world")

    @property
    def ready(self) -> list[str]:
        """Actions that would work right now and earn an achievement not yet unlocked, by Crafter's
        own rules: sleep below full energy (wake_up follows); place_* with the cost in hand, facing
        a free cell of the right ground; make_* with the cost in hand and the stations within the
        3x3 area around the player."""
        def affordable(uses: dict) -> bool:
            return all(self.inventory.get(item, 0) >= amount for item, amount in uses.items())
        ahead = self.view.get(self.facing)  # a creature or plant there hides the ground: nothing fits
        near = {self.view.get((dx, dy)) for dx in (-1, 0, 1) for dy in (-1, 0, 1)}
        works = {"sleep": self.vitals["energy"] < constants.items["energy"]["max"]}
        works.update({f"place_{name}": ahead in rule["where"] and affordable(rule["uses"])
                      for name, rule in constants.place.items()})
        works.update({f"make_{name}": set(rule["nearby"]) <= near and affordable(rule["uses"])
                      for name, rule in constants.make.items()})
        return [action for action in ACTIONS if works.get(action) and ACHIEVEMENT_OF[action] not in self.achievements]

    @property
    def text(self) -> str:
        return observation_text(self)


def cell_name(material: str | None, obj) -> str:
    if obj is None:
        return material or "edge"
    if isinstance(obj, objects.Plant):
        return "ripe plant" if obj.ripe else "sapling"
    return type(obj).__name__.lower()


def observe(env: CrafterEnv) -> Observation:
    world, player = env._world, env._player
    px, py = int(player.pos[0]), int(player.pos[1])
    view = {}
    for dx, dy in view_offsets():
        x, y = px + dx, py + dy
        if 0 <= x < WORLD_SIZE and 0 <= y < WORLD_SIZE:
            view[(dx, dy)] = cell_name(*world[x, y])
    inventory = {name: int(count) for name, count in player.inventory.items()
                 if name not in VITALS and count > 0}
    return Observation(
        step=int(env._step), daylight=float(world.daylight),
        vitals={name: int(player.inventory[name]) for name in VITALS},
        inventory=inventory, achievements=env.achievements,
        facing=tuple(int(v) for v in player.facing), sleeping=bool(player.sleeping), view=view)


def route_to(view: dict, facing: tuple[int, int], name: str) -> list[str] | None:
    """The shortest action sequence inside the visible window that ends facing the nearest `name` and
    acts on it (`do`). Cells outside the view are unknown, so never entered."""
    moves = shortest_moves((0, 0), facing, view.get, lambda cell: view.get(cell) in WALKABLE,
                           lambda position, looking: view.get(add(position, looking)) == name)
    return None if moves is None else moves + ["do"]


READY_LINE = "New achievement ready: "  # the actions that would earn a new achievement right now


def ready_in(text: str) -> list[str]:
    """The actions an observation text lists as ready (its READY_LINE), in order; none: []."""
    for line in text.splitlines():
        if line.startswith(READY_LINE):
            return [name.strip() for name in line[len(READY_LINE):].rstrip(".").split(",")]
    return []


def observation_text(obs: Observation) -> str:
    ready = obs.ready  # a property that scans the recipes: once per observation
    counts: dict[str, int] = {}
    for name in obs.view.values():
        counts[name] = counts.get(name, 0) + 1
    background = max(sorted(counts), key=counts.get) if counts else "grass"
    groups: dict[str, list[tuple[int, int]]] = {}
    for offset, name in obs.view.items():
        if name != background:
            groups.setdefault(name, []).append(offset)
    lines = [
        f"Step {obs.step}, {'night' if obs.is_night else 'day'}."
        f" You face {COMPASS[obs.facing]}; in front of you: {obs.in_front}."
        + (" You are asleep." if obs.sleeping else ""),
        "Vitals: " + ", ".join(f"{name} {obs.vitals[name]}/{constants.items[name]['max']}" for name in VITALS) + ".",
        "Inventory: " + (", ".join(f"{k} {v}" for k, v in obs.inventory.items()) or "empty") + ".",
        *([f"{READY_LINE}{', '.join(ready)}."] if ready else []),
        f"Achievements ({len(obs.achievements)}/{len(ACHIEVEMENTS)}): " + (", ".join(obs.achievements) or "none") + ".",
        f"You see (offsets from you; E=right, W=left, N=up, S=down; everything else is {background}):",
    ]
    by_distance = sorted(groups.items(), key=lambda item: min(manhattan(cell) for cell in item[1]))
    for name, cells in by_distance:
        cells.sort(key=lambda c: (manhattan(c), c))
        route = route_to(obs.view, obs.facing, name) if name in TARGETS else None
        hint = f" (go: {' '.join(route[:HINT_LENGTH])})" if route else ""
        lines.append(f"- {name}: " + ", ".join(offset_text(*c) for c in cells) + hint)
    return "\n".join(lines)
