"""builtin:expert — the scripted teacher: deterministic, valid, explained, and actually good."""
from synth_qwen.crafter_env import ACTIONS, CrafterEnv
from synth_qwen.observation import observe
from synth_qwen.expert import ExpertAgent


def play(seed: int, difficulty: str = "easy", turns: int = 150, max_actions: int = 5):
    """One episode as the runner plays it: act, run the actions until done, observe."""
    env = CrafterEnv(seed=seed, difficulty=difficulty)
    env.start()
    obs = observe(env)
    agent = ExpertAgent(max_actions=max_actions, seed=seed)
    turns_played = []
    for _ in range(turns):
        actions, reasoning = agent.act(obs)
        turns_played.append((actions, reasoning))
        result = None
        for action in actions:
            result = env.act(action)
            if result.done:
                break
        if result.done:
            break
        obs = observe(env)
    return turns_played, env.achievements


def test_same_seed_and_world_give_the_same_actions():
    first, _ = play(seed=7, turns=80)
    second, _ = play(seed=7, turns=80)
    assert first == second


def test_actions_are_valid_and_every_turn_names_its_subgoal():
    for max_actions in (1, 5):
        turns, _ = play(seed=3, difficulty="normal", turns=120, max_actions=max_actions)
        for actions, reasoning in turns:
            assert 1 <= len(actions) <= max_actions
            assert all(action in ACTIONS for action in actions)
            assert reasoning.startswith("subgoal: ") and len(reasoning) < 120


def test_early_game_on_easy():
    """Measured: 6 episodes x 150 turns on easy averaged 19.0 distinct achievements (2026-11);
    wood, table and pickaxe come in every episode."""
    results = [play(seed)[1] for seed in range(1, 7)]
    mean = sum(len(unlocked) for unlocked in results) / len(results)
    assert mean >= 16, f"mean distinct achievements {mean:.1f}"
    for unlocked in results:
        assert {"collect_wood", "place_table", "make_wood_pickaxe"} <= set(unlocked)


def test_one_action_per_turn_still_mines_coal_and_finds_a_sapling():
    """BALROG's protocol sends one action a turn. Measured on seeds 1-8, 400 turns on normal
    (2026-12-04): coal in 8 episodes and a sapling in 6; before the ore search and the sapling tries
    counted in `do`s, 0 and 2."""
    results = [play(seed, difficulty="normal", turns=400, max_actions=1)[1] for seed in range(1, 9)]
    assert sum("collect_coal" in unlocked for unlocked in results) >= 6
    assert sum("collect_sapling" in unlocked for unlocked in results) >= 5
