"""Deterministic, fast Crafter with difficulty presets, a text observation and the action schema.

`CrafterEnv(seed, difficulty)` is a `crafter.Env` that
- renders no image while playing (`render()` on demand still works);
- is reproducible across processes: chunk balancing sees creatures sorted by position (stock
  iterates a `set` in identity order) and night-time render noise has its own RNG (stock draws
  it from the world RNG, so rendering changed the game);
- applies a difficulty preset by editing the stock-generated world with the preset's own RNG
  (so `normal`, which makes no edits, is the stock world) and by scaling the creature
  spawn/despawn targets of *this* instance only.

Run `python -m synth_qwen.crafter_env` for a demo, `--stats` for per-preset world statistics.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

import crafter
from crafter import constants, engine, objects

ACTIONS: tuple[str, ...] = tuple(constants.actions)
ACHIEVEMENTS: tuple[str, ...] = tuple(constants.achievements)
VITALS = ("health", "food", "drink", "energy")
# The achievement an action earns at once (sleep: wake_up, when the player wakes with full energy).
ACHIEVEMENT_OF = {action: "wake_up" if action == "sleep" else action
                  for action in ACTIONS if action == "sleep" or action in ACHIEVEMENTS}
VIEW_WIDTH, VIEW_HEIGHT = 9, 7  # the visible world around the player (stock local view)
WORLD_SIZE = 64
DEFAULT_LENGTH = 10_000  # Crafter's own episode cap in env steps

# Each preset scales what stock worldgen produced and the creature targets of chunk balancing.
# 1.0 everywhere = stock. Resource factors < 1 remove cells, > 1 add cells on eligible ground.
PRESETS: dict[str, dict[str, float]] = {
    #            trees coal iron diamond lava  cows zombies skeletons | spawn: zombie skel cow
    "peaceful": dict(tree=1.6, coal=1.6, iron=1.8, diamond=2.0, lava=0.0, cow=1.6, zombie=0.0,
                     skeleton=0.0, zombie_spawn=0.0, skeleton_spawn=0.0, cow_spawn=1.5),
    "easy":     dict(tree=1.4, coal=1.4, iron=1.5, diamond=1.5, lava=0.5, cow=1.4, zombie=0.5,
                     skeleton=0.5, zombie_spawn=0.5, skeleton_spawn=0.5, cow_spawn=1.3),
    "normal":   dict(tree=1.0, coal=1.0, iron=1.0, diamond=1.0, lava=1.0, cow=1.0, zombie=1.0,
                     skeleton=1.0, zombie_spawn=1.0, skeleton_spawn=1.0, cow_spawn=1.0),
    "hard":     dict(tree=0.6, coal=0.6, iron=0.6, diamond=0.5, lava=1.6, cow=0.6, zombie=2.0,
                     skeleton=1.6, zombie_spawn=2.0, skeleton_spawn=1.6, cow_spawn=0.7),
}
DIFFICULTIES = tuple(PRESETS)

# Where preset edits may add a material, and what a removed cell turns back into.
MATERIAL_EDITS = {
    "tree": dict(on="grass", removed_to="grass"),
    "coal": dict(on="stone", removed_to="stone"),
    "iron": dict(on="stone", removed_to="stone"),
    "diamond": dict(on="stone", removed_to="stone"),
    "lava": dict(on="stone", removed_to="stone"),
}
# Initial creatures: the ground they stand on and the least distance from the player's start.
CREATURE_EDITS = {
    "cow": dict(cls=objects.Cow, on="grass", min_distance=4),
    "zombie": dict(cls=objects.Zombie, on="grass", min_distance=11),
    "skeleton": dict(cls=objects.Skeleton, on="path", min_distance=11),
}
SAFE_START_RADIUS = 6  # preset edits never put lava or hostiles this close to the start

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
COMPASS = {(-1, 0): "west", (1, 0): "east", (0, -1): "north", (0, 1): "south"}
MOVE_FOR = {(-1, 0): "move_left", (1, 0): "move_right", (0, -1): "move_up", (0, 1): "move_down"}
# Things worth walking to and facing; the observation shows the route to the nearest one.
TARGETS = ("tree", "water", "stone", "coal", "iron", "diamond", "cow", "zombie", "skeleton",
           "ripe plant", "sapling")


def preset(difficulty: str) -> dict[str, float]:
    if difficulty not in PRESETS:
        raise ValueError(f"unknown difficulty {difficulty!r}; allowed: {', '.join(DIFFICULTIES)}")
    return PRESETS[difficulty]


# ---------------------------------------------------------------------------------------
# The environment

class QuietLocalView(engine.LocalView):
    """Stock local view whose night noise comes from its own RNG, not the world's."""

    def __init__(self, world, textures, grid, seed):
        super().__init__(world, textures, grid)
        self._noise_random = np.random.RandomState(seed)

    def _noise(self, canvas, amount, stddev):
        noise = self._noise_random.uniform(32, 127, canvas.shape[:2])[..., None]
        mask = amount * self._vignette(canvas.shape, stddev)[..., None]
        return (1 - mask) * canvas + mask * noise


_TEXTURES: engine.Textures | None = None


def shared_textures() -> engine.Textures:
    """Textures load once per process, and only when something is rendered."""
    global _TEXTURES
    if _TEXTURES is None:
        _TEXTURES = engine.Textures(constants.root / "assets")
    return _TEXTURES


@dataclass(frozen=True)
class StepResult:
    reward: float
    new_achievements: tuple[str, ...]
    done: bool
    end_reason: str | None  # "died" | "length" | None


class CrafterEnv(crafter.Env):
    """Stock Crafter rules; deterministic; no rendering unless asked; one preset per instance."""

    def __init__(self, seed: int = 0, difficulty: str = "normal", length: int = DEFAULT_LENGTH):
        self.difficulty = difficulty
        self.preset = preset(difficulty)
        # Stock __init__ loads textures and builds views; we defer all drawing to render().
        self._area = (WORLD_SIZE, WORLD_SIZE)
        self._view = np.array((9, 9))
        self._size = np.array((WORLD_SIZE, WORLD_SIZE))
        self._reward = True
        self._length = length
        self._seed = int(seed)
        self._episode = 0
        self._world = engine.World(self._area, constants.materials, (12, 12))
        self._views = None
        self._step = None
        self._player = None
        self._last_health = None
        self._unlocked = None
        self.reward_range = None
        self.metadata = None

    # -- episodes ----------------------------------------------------------------------
    @property
    def episode(self) -> int:
        return self._episode

    def reset(self, episode: int | None = None) -> "Observation":
        """Start episode `episode` (default: the next one) of this seed; stock world + preset."""
        if episode is not None:
            self._episode = int(episode) - 1  # stock reset() increments first
        self._views = None
        super().reset()
        self._apply_preset()
        return self.observe()

    def _obs(self):
        return None  # stock renders a 64x64 image every step; rollouts never look at it

    def _preset_random(self) -> np.random.RandomState:
        sequence = np.random.SeedSequence([self._seed, self._episode, 0x5EED])
        return np.random.RandomState(sequence.generate_state(1)[0])

    def _apply_preset(self) -> None:
        if all(value == 1.0 for value in self.preset.values()):
            return
        random = self._preset_random()
        start = self._player.pos
        for material, rule in MATERIAL_EDITS.items():
            self._scale_material(random, material, self.preset[material], rule, start)
        for name, rule in CREATURE_EDITS.items():
            self._scale_creatures(random, rule, self.preset[name], start)

    def _far_from_start(self, xs, ys, start, radius):
        return np.abs(xs - start[0]) + np.abs(ys - start[1]) > radius

    def _scale_material(self, random, material, factor, rule, start) -> None:
        world = self._world
        cells = np.argwhere(world._mat_map == world._mat_ids[material])
        if factor < 1.0:
            removed = cells[random.uniform(size=len(cells)) >= factor]
            for x, y in removed:
                world[x, y] = rule["removed_to"]
        elif factor > 1.0:
            wanted = int(math.ceil((factor - 1.0) * len(cells)))
            ground = np.argwhere(world._mat_map == world._mat_ids[rule["on"]])
            radius = SAFE_START_RADIUS if material == "lava" else 1
            ground = ground[self._far_from_start(ground[:, 0], ground[:, 1], start, radius)]
            ground = ground[[world[tuple(cell)][1] is None for cell in ground]] if len(ground) else ground
            if len(ground) == 0 or wanted == 0:
                return
            if material == "lava":  # grow existing pools rather than scatter lava on open stone
                near = np.zeros(world.area, bool)
                for x, y in cells:
                    near[max(0, x - 2): x + 3, max(0, y - 2): y + 3] = True
                ground = ground[near[ground[:, 0], ground[:, 1]]]
                if len(ground) == 0:
                    return
            chosen = random.choice(len(ground), size=min(wanted, len(ground)), replace=False)
            for x, y in ground[chosen]:
                world[x, y] = material

    def _scale_creatures(self, random, rule, factor, start) -> None:
        world = self._world
        existing = sorted((obj for obj in world.objects if type(obj) is rule["cls"]),
                          key=lambda obj: (int(obj.pos[0]), int(obj.pos[1])))
        if factor < 1.0:
            for obj in existing:
                if random.uniform() >= factor:
                    world.remove(obj)
        elif factor > 1.0:
            wanted = int(math.ceil((factor - 1.0) * max(len(existing), 1)))
            ground = np.argwhere(world._mat_map == world._mat_ids[rule["on"]])
            ground = ground[self._far_from_start(ground[:, 0], ground[:, 1], start, rule["min_distance"])]
            ground = ground[[world[tuple(cell)][1] is None for cell in ground]] if len(ground) else ground
            if len(ground) == 0:
                return
            chosen = random.choice(len(ground), size=min(wanted, len(ground)), replace=False)
            for pos in ground[np.sort(chosen)]:
                world.add(self._make_creature(rule["cls"], pos))

    def _make_creature(self, cls, pos):
        if cls is objects.Cow:
            return objects.Cow(self._world, pos)
        return cls(self._world, pos, self._player)

    # -- stepping ----------------------------------------------------------------------
    def step(self, action: str | int) -> StepResult:
        """One env step. Accepts an action name or index; returns reward and what changed."""
        name = ACTIONS[action] if isinstance(action, (int, np.integer)) else action
        if name not in ACTIONS:
            raise ValueError(f"unknown action {name!r}")
        self._step += 1
        self._update_time()
        self._player.action = name
        reach = 2 * max(self._view)
        for obj in self._world.objects:
            if self._player.distance(obj) < reach:
                obj.update()
        if self._step % 10 == 0:
            for chunk, objs in self._world.chunks.items():
                self._balance_chunk(chunk, objs)
        reward = (self._player.health - self._last_health) / 10
        self._last_health = self._player.health
        new = tuple(sorted(name for name, count in self._player.achievements.items()
                           if count > 0 and name not in self._unlocked))
        if new:
            self._unlocked |= set(new)
            reward += 1.0
        if self._player.health <= 0:
            end_reason = "died"
        elif self._length and self._step >= self._length:
            end_reason = "length"
        else:
            end_reason = None
        return StepResult(float(reward), new, end_reason is not None, end_reason)

    def _balance_chunk(self, chunk, objs):
        light = self._world.daylight
        zombie, skeleton, cow = (self.preset[k] for k in ("zombie_spawn", "skeleton_spawn", "cow_spawn"))
        # Sorting by position replaces stock's identity-ordered set iteration (the
        # cross-process nondeterminism) without changing the spawn rules themselves.
        ordered = sorted(objs, key=lambda obj: (int(obj.pos[0]), int(obj.pos[1])))
        self._balance_object(
            chunk, ordered, objects.Zombie, "grass", 6, 0, 0.3, 0.4,
            lambda pos: objects.Zombie(self._world, pos, self._player),
            lambda num, space: (zombie * (0 if space < 50 else 3.5 - 3 * light),
                                zombie * (3.5 - 3 * light)))
        self._balance_object(
            chunk, ordered, objects.Skeleton, "path", 7, 7, 0.1, 0.1,
            lambda pos: objects.Skeleton(self._world, pos, self._player),
            lambda num, space: (skeleton * (0 if space < 6 else 1), skeleton * 2))
        self._balance_object(
            chunk, ordered, objects.Cow, "grass", 5, 5, 0.01, 0.1,
            lambda pos: objects.Cow(self._world, pos),
            lambda num, space: (cow * (0 if space < 30 else 1), cow * (1.5 + light)))

    # -- looking -----------------------------------------------------------------------
    def render(self, size=None):
        if self._views is None:
            textures = shared_textures()
            item_rows = int(np.ceil(len(constants.items) / self._view[0]))
            render_seed = np.random.SeedSequence([self._seed, self._episode, 0xD4A]).generate_state(1)[0]
            self._local_view = QuietLocalView(
                self._world, textures, [self._view[0], self._view[1] - item_rows], render_seed)
            self._item_view = engine.ItemView(textures, [self._view[0], item_rows])
            self._views = True
        return super().render(size)

    def observe(self) -> "Observation":
        return observe(self)

    def world_hash(self) -> str:
        """A digest of everything that evolves: materials, creatures, the player's state."""
        digest = hashlib.sha1(self._world._mat_map.tobytes())
        for obj in self._world.objects:
            digest.update(f"{type(obj).__name__}{tuple(obj.pos)}{obj.health};".encode())
        player = self._player
        digest.update(json.dumps([player.inventory, player.achievements, list(player.facing),
                                  player.sleeping, self._step], sort_keys=True, default=int).encode())
        return digest.hexdigest()[:16]

    @property
    def achievements(self) -> tuple[str, ...]:
        return tuple(sorted(self._unlocked))

    @property
    def steps(self) -> int:
        return self._step


# ---------------------------------------------------------------------------------------
# The observation: what the agent sees, as data (for the expert) and as text (for models)

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
        return self.daylight < 0.35

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
    view = {}
    half_w, half_h = VIEW_WIDTH // 2, VIEW_HEIGHT // 2
    px, py = int(player.pos[0]), int(player.pos[1])
    for dx in range(-half_w, half_w + 1):
        for dy in range(-half_h, half_h + 1):
            if dx == 0 and dy == 0:
                continue
            x, y = px + dx, py + dy
            if not (0 <= x < WORLD_SIZE and 0 <= y < WORLD_SIZE):
                continue
            material, obj = world[x, y]
            view[(dx, dy)] = cell_name(material, obj)
    inventory = {name: int(count) for name, count in player.inventory.items()
                 if name not in VITALS and count > 0}
    return Observation(
        step=int(env._step), daylight=float(world.daylight),
        vitals={name: int(player.inventory[name]) for name in VITALS},
        inventory=inventory, achievements=tuple(sorted(env._unlocked)),
        facing=tuple(int(v) for v in player.facing), sleeping=bool(player.sleeping), view=view)


def offset_text(dx: int, dy: int) -> str:
    """(2, -1) -> '2E 1N'. x grows east, y grows south."""
    parts = []
    if dx:
        parts.append(f"{abs(dx)}{'E' if dx > 0 else 'W'}")
    if dy:
        parts.append(f"{abs(dy)}{'S' if dy > 0 else 'N'}")
    return " ".join(parts)


SEARCH_ORDER = ((0, 1), (-1, 0), (1, 0), (0, -1))  # south first: ties break the same way everywhere
WALKABLE = frozenset(constants.walkable)
HINT_LENGTH = 5  # the route shown per target: at most this many actions (the default turn size)


def route_to(view: dict, facing: tuple[int, int], name: str) -> list[str] | None:
    """The shortest action sequence, inside the visible window, that ends facing the nearest `name`
    and acts on it (`do`). Breadth-first over (position, facing): a move onto open ground moves,
    a move toward anything else only turns; lava and cells outside the view are never entered."""
    start = ((0, 0), tuple(facing))
    parent = {start: None}
    queue = [start]
    for state in queue:
        (x, y), looking = state
        if view.get((x + looking[0], y + looking[1])) == name:
            moves = []
            while parent[state] is not None:
                state, move = parent[state]
                moves.append(move)
            return moves[::-1] + ["do"]
        for d in SEARCH_ORDER:
            ahead = (x + d[0], y + d[1])
            cell = view.get(ahead)
            if cell is None or cell == "lava":
                continue
            new = (ahead if cell in WALKABLE else (x, y), d)
            if new not in parent:
                parent[new] = (state, MOVE_FOR[d])
                queue.append(new)
    return None


def observation_text(obs: Observation) -> str:
    """One documented text format (README 'Observation'); built from the world, not the image."""
    ready = obs.ready  # a property that scans the recipes: once per observation
    counts: dict[str, int] = {}
    for name in obs.view.values():
        counts[name] = counts.get(name, 0) + 1
    background = max(sorted(counts), key=counts.get) if counts else "grass"
    groups: dict[str, list[tuple[int, int]]] = {}
    for (dx, dy), name in obs.view.items():
        if name != background:
            groups.setdefault(name, []).append((dx, dy))
    lines = [
        f"Step {obs.step}, {'night' if obs.is_night else 'day'}."
        f" You face {COMPASS[obs.facing]}; in front of you: {obs.in_front}."
        + (" You are asleep." if obs.sleeping else ""),
        "Vitals: " + ", ".join(f"{name} {obs.vitals[name]}/9" for name in VITALS) + ".",
        "Inventory: " + (", ".join(f"{k} {v}" for k, v in obs.inventory.items()) or "empty") + ".",
        *([f"New achievement ready: {', '.join(ready)}."] if ready else []),
        f"Achievements ({len(obs.achievements)}/22): " + (", ".join(obs.achievements) or "none") + ".",
        f"You see (offsets from you; E=right, W=left, N=up, S=down; everything else is {background}):",
    ]
    by_distance = sorted(groups.items(), key=lambda item: min(abs(x) + abs(y) for x, y in item[1]))
    for name, cells in by_distance:
        cells.sort(key=lambda c: (abs(c[0]) + abs(c[1]), c))
        route = route_to(obs.view, obs.facing, name) if name in TARGETS else None
        hint = f" (go: {' '.join(route[:HINT_LENGTH])})" if route else ""
        lines.append(f"- {name}: " + ", ".join(offset_text(*c) for c in cells) + hint)
    return "\n".join(lines)


def rules_summary() -> str:
    """A system-prompt paragraph with the real rules and the real action names only."""
    table = constants.place["table"]["uses"]
    furnace = constants.place["furnace"]["uses"]
    cost = lambda uses: " and ".join(f"{n} {k}" for k, n in uses.items())  # noqa: E731
    return (
        "You play Crafter, a 2D survival game on a 64x64 grid; you see 9 cells wide and 7 tall around you. "
        "move_left/right/up/down go west/east/north/south (a move always turns you to face that way; "
        "you only walk onto grass, sand and path; lava kills). 'do' acts on the cell you face: "
        "collect wood from trees, drink from water, attack cows/zombies/skeletons (hitting a cow "
        "until it dies eats it), eat ripe plants, and mine stone and coal (need a wood_pickaxe), iron "
        "(stone_pickaxe) or diamond (iron_pickaxe). 'do' on grass sometimes gives a sapling; "
        f"place_plant plants it. place_table needs {cost(table)}; place_furnace needs {cost(furnace)} and "
        "a table nearby; place_stone puts a stone in front of you. make_wood_pickaxe/make_wood_sword "
        "need a table next to you; make_stone_* also need stone; make_iron_* need a table and a furnace "
        "nearby plus wood, coal and iron. Food, drink and energy fall over time: eat, drink, and sleep "
        "when energy is low (sleep at night, safely walled in). Health regenerates while they are above 0. "
        "Zombies come out on grass at night; skeletons shoot arrows in dark tunnels. Goal: unlock as many "
        "of the 22 achievements as possible (collect_*, place_*, make_*, eat_*, defeat_*, wake_up)."
    )


# ---------------------------------------------------------------------------------------
# Action schema: the 17 names are the single source of truth

INTERACT_TOOL_NAME = "interact"


def interact_tool(max_actions: int = 5) -> dict:
    """The OpenAI tools entry for interact(actions: 1..N names, reasoning)."""
    return {
        "type": "function",
        "function": {
            "name": INTERACT_TOOL_NAME,
            "description": f"Perform 1 to {max_actions} Crafter actions in order.",
            "parameters": {
                "type": "object",
                "properties": {
                    "reasoning": {"type": "string", "description": "Your current subgoal, briefly."},
                    "actions": {
                        "type": "array", "minItems": 1, "maxItems": max_actions,
                        "items": {"type": "string", "enum": list(ACTIONS)},
                        "description": "Action names, executed in order.",
                    },
                },
                "required": ["actions"],
            },
        },
    }


def system_prompt(max_actions: int = 5, tool_mode: str = "tools", style: str = "full") -> str:
    """`full`: the rules paragraph + action names (for real LLMs). `compact`: one line, for tiny
    models that cannot use the rules and pay for every prompt token in training and inference."""
    how = (f"Each turn, call the interact tool with 1 to {max_actions} actions."
           if tool_mode == "tools" else
           f"Each turn, answer with 1 to {max_actions} action names on one line, comma-separated, "
           "e.g. 'Actions: move_left, do'.")
    if style == "compact":
        return f"You play Crafter. Unlock as many achievements as you can. {how}"
    return f"{rules_summary()}\nActions: {', '.join(ACTIONS)}.\n{how}"


def validate_actions(actions, max_actions: int = 5) -> tuple[list[str] | None, str | None]:
    """(actions, None) when valid, else (None, reason) — unknown names are never noop."""
    if not isinstance(actions, list) or not actions:
        return None, "actions must be a non-empty list of action names"
    if len(actions) > max_actions:
        return None, f"at most {max_actions} actions per turn, got {len(actions)}"
    unknown = [a for a in actions if not isinstance(a, str) or a not in ACTIONS]
    if unknown:
        return None, f"unknown action {unknown[0]!r}; valid actions: {', '.join(ACTIONS)}"
    return list(actions), None


def parse_interact_arguments(arguments: str, max_actions: int = 5) -> tuple[list[str] | None, str | None]:
    """Validate the JSON arguments string of an interact tool call."""
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
    except json.JSONDecodeError:
        return None, "interact arguments are not valid JSON"
    if not isinstance(parsed, dict) or "actions" not in parsed:
        return None, "interact arguments need an 'actions' list"
    return validate_actions(parsed["actions"], max_actions)


# ---------------------------------------------------------------------------------------
# `python -m synth_qwen.crafter_env` — demo and per-preset statistics

STAT_COLUMNS = ("tree", "coal", "iron", "diamond", "water", "lava", "cow", "zombie", "skeleton",
                "zombies_seen_300")


def world_stats(seed: int, difficulty: str, walk_steps: int = 300) -> dict[str, float]:
    env = CrafterEnv(seed=seed, difficulty=difficulty)
    env.reset()
    world = env._world
    stats = {name: int(world.count(name)) for name in ("tree", "coal", "iron", "diamond", "water", "lava")}
    for name, cls in (("cow", objects.Cow), ("zombie", objects.Zombie), ("skeleton", objects.Skeleton)):
        stats[name] = sum(type(obj) is cls for obj in world.objects)
    walk = np.random.RandomState(seed)
    seen = set()
    for _ in range(walk_steps):
        env.step(int(walk.randint(1, 5)))  # random walk: the four moves
        env._player.health = 9  # an invulnerable observer, so every preset is watched 300 steps
        px, py = env._player.pos
        for obj in world.objects:
            if type(obj) is objects.Zombie and abs(obj.pos[0] - px) <= 4 and abs(obj.pos[1] - py) <= 3:
                seen.add(id(obj))
    stats["zombies_seen_300"] = len(seen)
    return stats


def preset_stats(worlds: int = 20, first_seed: int = 1000) -> dict[str, dict[str, float]]:
    table = {}
    for difficulty in DIFFICULTIES:
        rows = [world_stats(first_seed + i, difficulty) for i in range(worlds)]
        table[difficulty] = {col: float(np.mean([row[col] for row in rows])) for col in STAT_COLUMNS}
    return table


def format_stats(table: dict[str, dict[str, float]]) -> str:
    header = "| preset | " + " | ".join(STAT_COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(STAT_COLUMNS) + 1)]
    for difficulty, row in table.items():
        lines.append(f"| {difficulty} | " + " | ".join(f"{row[c]:.1f}" for c in STAT_COLUMNS) + " |")
    return "\n".join(lines)


def demo(episodes: int, seed: int) -> None:
    """Random play on each preset: one observation, then per-difficulty outcomes."""
    env = CrafterEnv(seed=seed, difficulty="easy")
    print("One text observation (seed %d, easy):\n" % seed)
    print(env.reset().text, "\n")
    print(f"Random policy, {episodes} episodes per difficulty (until death or 10,000 steps):")
    for difficulty in DIFFICULTIES:
        lengths, unlocked = [], []
        for i in range(episodes):
            env = CrafterEnv(seed=seed + i, difficulty=difficulty)
            env.reset()
            actions = np.random.RandomState(seed + i)
            result = None
            while result is None or not result.done:
                result = env.step(int(actions.randint(len(ACTIONS))))
            lengths.append(env.steps)
            unlocked.append(len(env.achievements))
        print(f"  {difficulty:9s} mean length {np.mean(lengths):6.1f} steps, "
              f"mean achievements {np.mean(unlocked):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m synth_qwen.crafter_env", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stats", action="store_true", help="print per-preset world statistics")
    parser.add_argument("--worlds", type=int, default=20, help="worlds per preset for --stats")
    parser.add_argument("--episodes", type=int, default=3, help="random episodes per preset for the demo")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if args.worlds < 1 or args.episodes < 1:
        parser.error("--worlds and --episodes must be >= 1")
    if args.stats:
        print(f"Per-preset means over {args.worlds} worlds (counts at start; zombies seen in view "
              f"during a 300-step random walk):")
        print(format_stats(preset_stats(args.worlds)))
    else:
        demo(args.episodes, args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
