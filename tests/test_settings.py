"""Settings: env.example documents every variable; resolution rules of DESIGN §3."""
import re
from pathlib import Path

import pytest

from synth_qwen import settings
from synth_qwen.settings import SettingsError

ENV_EXAMPLE = Path(__file__).resolve().parents[1] / "env.example"
STAGES = [settings.RolloutSettings, settings.EvalSettings, settings.FilterSettings, settings.KickoffSettings,
          settings.ServeSettings, settings.RoundsSettings]


def test_env_example_lists_every_variable():
    documented = set(re.findall(r"^([A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    declared = {name.upper() for stage in STAGES for name in stage.model_fields}
    assert declared - documented == set()
    assert documented - declared <= {"OPENAI_BASE_URL", "OPENAI_API_KEY", "SYNTH_BASE_URL", "SYNTH_API_KEY",
                                     "LEARNING_V2_BASE_URL"}


def test_env_example_defaults_parse():
    """Every value written in env.example is accepted by its stage (blank = default)."""
    values = dict(re.findall(r"^([A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    for stage in STAGES:
        settings.parse(stage, settings.env_values(stage, values))


def test_endpoint_resolution_order():
    assert settings.inference_base_url({}) == "http://localhost:8000/api/v1"
    assert settings.inference_base_url({"SYNTH_BASE_URL": "https://h/api"}) == "https://h/api/v1"
    assert settings.inference_base_url({"OPENAI_BASE_URL": "http://v:8000/v1/", "SYNTH_BASE_URL": "https://h"}) == "http://v:8000/v1"
    assert settings.learning_base_url({"SYNTH_BASE_URL": "https://h/api"}) == "https://h/api"
    assert settings.learning_base_url({"LEARNING_V2_BASE_URL": "http://l/api", "SYNTH_BASE_URL": "https://h"}) == "http://l/api"
    assert settings.inference_api_key({"SYNTH_API_KEY": "s", "OPENAI_API_KEY": "o"}) == "o"
    assert settings.learning_api_key({"SYNTH_API_KEY": "s", "OPENAI_API_KEY": "o"}) == "s"
    with pytest.raises(SettingsError, match="OPENAI_BASE_URL='localhost:1' is invalid"):
        settings.inference_base_url({"OPENAI_BASE_URL": "localhost:1"})


@pytest.mark.parametrize("url,expected", [
    ("sqlite:///traces/x.db", "sqlite:///traces/x.db"),
    ("sqlite+aiosqlite:///traces/x.db", "sqlite:///traces/x.db"),
    ("traces/x.db", "sqlite:///traces/x.db"),
    ("postgresql://u:p@h/db", "postgresql://u:p@h/db"),
])
def test_db_urls(url, expected):
    assert settings.normalize_db_url(url) == expected


def test_dotenv_is_read_and_real_environment_wins(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text("CRAFTER_EPISODES=7\nCRAFTER_DIFFICULTY=hard\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CRAFTER_DIFFICULTY", "peaceful")
    monkeypatch.delenv("CRAFTER_EPISODES", raising=False)
    loaded = settings.load(settings.RolloutSettings)
    assert loaded.crafter_episodes == 7 and loaded.crafter_difficulty == "peaceful"
