"""Deterministic, fast Crafter with difficulty presets: the env. What the agent sees is `observation`,
what it may say is `action_schema`, the geometry both use is `grid`.

`CrafterEnv(seed, difficulty)` is a `crafter.Env` and keeps its contract: `reset()` returns the image,
`step(action)` returns `(image, reward, done, info)`, so gym-style loops and `crafter.Recorder` work.
Beside it, rollouts use `start()` and `act(name) -> StepResult`, which draw nothing. It
- renders no image while playing with `act` (`render()` on demand still works);
- is reproducible across processes: chunk balancing sees creatures sorted by position (stock
  iterates a `set` in identity order) and night-time render noise has its own RNG (stock draws
  it from the world RNG, so rendering changed the game);
- applies a difficulty preset by editing the stock-generated world with the preset's own RNG
  (so `normal`, which makes no edits, is the stock world) and by scaling the creature
  spawn/despawn targets of *this* instance only.

`python -m synth_qwen.world_stats` measures what the presets do.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np

import crafter
from crafter import constants, engine, objects

from synth_qwen.grid import STOCK_VIEW, WORLD_SIZE

ACTIONS: tuple[str, ...] = tuple(constants.actions)
ACHIEVEMENTS: tuple[str, ...] = tuple(constants.achievements)
VITALS = ("health", "food", "drink", "energy")
# The achievement an action earns at once (sleep: wake_up, when the player wakes with full energy).
ACHIEVEMENT_OF = {action: "wake_up" if action == "sleep" else action
                  for action in ACTIONS if action == "sleep" or action in ACHIEVEMENTS}
DEFAULT_LENGTH = 10_000  # Crafter's own episode cap in env steps
# What took the player's last health point: a zombie's blow, a skeleton's arrow, lava underfoot,
# or (while food, drink or energy is empty) the slow health loss of that need. Order = the order
# the needs are named in when several are empty at once.
DEATH_CAUSES = ("zombie", "arrow", "lava", "starvation", "thirst", "exhaustion")
STARVING_NEED = {"food": "starvation", "drink": "thirst", "energy": "exhaustion"}

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
    death_cause: str | None = None  # one of DEATH_CAUSES when end_reason is "died"


class CrafterEnv(crafter.Env):
    """Stock Crafter rules; deterministic; no rendering unless asked; one preset per instance."""

    def __init__(self, seed: int = 0, difficulty: str = "normal", length: int = DEFAULT_LENGTH,
                 size=(WORLD_SIZE, WORLD_SIZE), reward: bool = True):
        self.difficulty = difficulty
        self.preset = preset(difficulty)
        # Stock __init__ loads textures and builds views; we defer all drawing to render().
        self._area = (WORLD_SIZE, WORLD_SIZE)
        self._view = np.array((STOCK_VIEW, STOCK_VIEW))
        self._size = np.array(size if hasattr(size, "__len__") else (size, size))
        self._reward = reward
        self._length = length
        self._seed = int(seed)
        self._episode = 0
        self._world = engine.World(self._area, constants.materials, (12, 12))
        self._views = None
        self._sem_view = engine.SemanticView(self._world, [
            objects.Player, objects.Cow, objects.Zombie, objects.Skeleton, objects.Arrow, objects.Plant])
        self._step = None
        self._player = None
        self._last_health = None
        self._unlocked = None
        self.reward_range = None
        self.metadata = None

    # -- Crafter's own API: an image observation and a gym-style step ------------------
    def reset(self) -> np.ndarray:
        """Stock contract: start the next episode and return its image (drawing costs time;
        rollouts call start() and act() instead)."""
        self.start()
        return self.render()

    def step(self, action) -> tuple[np.ndarray, float, bool, dict]:
        """Stock contract: (image, reward, done, info) with stock's info keys."""
        result = self.act(action)
        info = {"inventory": self._player.inventory.copy(), "achievements": self._player.achievements.copy(),
                "discount": 1 - float(result.end_reason == "died"), "semantic": self._sem_view(),
                "player_pos": self._player.pos, "reward": result.reward}
        return self.render(), result.reward if self._reward else 0.0, result.done, info

    # -- episodes ----------------------------------------------------------------------
    @property
    def episode(self) -> int:
        return self._episode

    def start(self, episode: int | None = None) -> None:
        """Start episode `episode` (default: the next one) of this seed: stock world + preset, no image."""
        if episode is not None:
            self._episode = int(episode) - 1  # stock reset() increments first
        self._views = None
        super().reset()
        self._apply_preset()

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
    def act(self, action: str | int) -> StepResult:
        """One env step, no image. Accepts an action name or index; returns reward and what changed."""
        name = ACTIONS[action] if isinstance(action, (int, np.integer)) else action
        if name not in ACTIONS:
            raise ValueError(f"unknown action {name!r}")
        self._step += 1
        self._update_time()
        self._player.action = name
        reach = 2 * max(self._view)
        player, death_cause = self._player, None
        for obj in self._world.objects:
            if player.distance(obj) < reach:
                alive = player.health > 0
                obj.update()
                if alive and player.health <= 0:
                    death_cause = self._death_cause(obj)
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
        return StepResult(float(reward), new, end_reason is not None, end_reason,
                          death_cause if end_reason == "died" else None)

    def _death_cause(self, killer) -> str:
        """Which of DEATH_CAUSES took the last health point, given the object whose update took it."""
        if isinstance(killer, objects.Zombie):
            return "zombie"
        if isinstance(killer, objects.Arrow):
            return "arrow"
        player = self._player
        if self._world[player.pos][0] == "lava":
            return "lava"
        empty = [cause for need, cause in STARVING_NEED.items() if player.inventory[need] <= 0]
        return empty[0] if empty else type(killer).__name__.lower()

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
