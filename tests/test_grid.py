"""Crafter's geometry: the shortest moves that the observation's hints and the expert's plans share."""
from synth_qwen.grid import add, offset_text, shortest_moves

OPEN = {(x, y): "grass" for x in range(-3, 4) for y in range(-3, 4)}


def moves(world: dict, goal, facing=(0, 1), max_states=None):
    return shortest_moves((0, 0), facing, world.get, lambda cell: world.get(cell) == "grass", goal, max_states)


def test_open_ground_is_walked():
    assert moves(OPEN, lambda pos, facing: pos == (2, 0)) == ["move_right", "move_right"]
    assert moves(OPEN, lambda pos, facing: pos == (0, 0)) == []  # already there


def test_a_move_toward_a_blocked_cell_only_turns():
    world = {**OPEN, (1, 0): "stone"}
    assert moves(world, lambda pos, facing: add(pos, facing) == (1, 0)) == ["move_right"]


def test_lava_and_unknown_cells_are_never_tried():
    world = {**OPEN, (1, 0): "lava"}
    path = moves(world, lambda pos, facing: pos == (2, 0))
    assert len(path) == 4 and path[0] != "move_right"  # around the lava, never onto it
    assert moves({(0, 0): "grass"}, lambda pos, facing: pos == (1, 0)) is None  # nothing known around


def test_a_spent_budget_still_checks_the_states_already_queued():
    """The start's neighbours are queued before the budget runs out; a goal among them is found."""
    assert moves(OPEN, lambda pos, facing: pos == (1, 0), max_states=2) == ["move_right"]
    assert moves(OPEN, lambda pos, facing: pos == (3, 3), max_states=2) is None


def test_offsets_read_as_compass_steps():
    assert (offset_text(2, -1), offset_text(-3, 0), offset_text(0, 0)) == ("2E 1N", "3W", "")
