"""What the agent sees: the observation text, built from the world, with route hints."""
import numpy as np

from crafter import objects
from synth_qwen.crafter_env import CrafterEnv
from synth_qwen.grid import VIEW_HEIGHT, VIEW_WIDTH, view_offsets
from synth_qwen.observation import observe


def arranged_env():
    env = CrafterEnv(seed=1, difficulty="normal")
    env.start()
    world, (px, py) = env._world, env._player.pos
    for obj in list(world.objects):
        if obj is not env._player:
            world.remove(obj)
    for dx in range(-5, 6):
        for dy in range(-4, 5):
            world[px + dx, py + dy] = "grass"
    world[px + 2, py] = "tree"
    world.add(objects.Cow(world, (px, py - 1)))
    world[px - 3, py + 2] = "water"
    return env


def test_observation_names_what_was_arranged():
    obs = observe(arranged_env())
    text = obs.text
    assert "everything else is grass" in text
    assert "- tree: 2E (go: move_right do)" in text
    assert "- cow: 1N (go: move_up do)" in text  # facing south: turn north first, then hit
    assert "- water: 3W 2S (go: move_down move_down move_left move_left do)" in text
    assert "You face south; in front of you: grass." in text
    assert "health 9/9, food 9/9, drink 9/9, energy 9/9" in text
    assert "Step 0, day." in text
    assert obs.view[(2, 0)] == "tree" and obs.view[(0, -1)] == "cow"


def test_observation_tracks_facing_inventory_and_achievements():
    env = arranged_env()
    env.act("move_right")  # walk one east: the tree (2E) is now right in front
    text = observe(env).text
    assert "You face east; in front of you: tree." in text and "- tree: 1E (go: do)" in text
    env.act("do")
    text = observe(env).text
    assert "Inventory: wood 1." in text and "Achievements (1/22): collect_wood." in text


def test_typical_observation_is_compact():
    lengths = []
    for seed in range(10):
        env = CrafterEnv(seed=seed, difficulty="normal")
        env.start()
        walk = np.random.RandomState(seed)
        for _ in range(60):
            env.act(int(walk.randint(1, 5)))
        lengths.append(len(observe(env).text))
    assert np.median(lengths) < 1400, lengths


def test_the_view_is_the_stock_local_view():
    """9 wide, 7 tall: the stock 9x9 grid minus its inventory rows, derived from Crafter itself."""
    assert (VIEW_WIDTH, VIEW_HEIGHT) == (9, 7)
    offsets = list(view_offsets())
    assert len(offsets) == 9 * 7 - 1 and (0, 0) not in offsets
    assert {dx for dx, _ in offsets} == set(range(-4, 5)) and {dy for _, dy in offsets} == set(range(-3, 4))
    env = CrafterEnv(seed=3, difficulty="normal")
    env.start()
    assert set(observe(env).view) == set(offsets)  # the player starts far from the border
