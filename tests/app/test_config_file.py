"""``streamlit_config.toml`` at the root is the Streamlit config that takes effect (DESIGN §6).

Streamlit only reads ``.streamlit/config.toml`` (in the working directory and next to the main
script); both are symlinks to the root file. The proof is Streamlit's own ``config show``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "streamlit_config.toml"
STREAMLIT = Path(sys.executable).with_name("streamlit")


def _config_show(cwd: Path) -> dict:
    """Parse `streamlit config show` (a TOML document with every option, commented)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}
    out = subprocess.run([str(STREAMLIT), "config", "show"], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    return tomllib.loads(text[text.index("\n[") + 1:])  # skip the free-text banner


def test_links_point_at_the_root_file():
    for link in (ROOT / ".streamlit" / "config.toml", ROOT / "app" / ".streamlit" / "config.toml"):
        assert link.is_symlink(), f"{link} must be a symlink to streamlit_config.toml"
        assert link.resolve() == CONFIG.resolve()


def test_root_file_has_the_required_settings():
    cfg = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    assert cfg["server"]["address"] == "localhost"
    assert cfg["server"]["fileWatcherType"] == "none"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["primaryColor"]


def test_streamlit_config_show_from_repo_root_sees_our_values():
    ours = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    shown = _config_show(ROOT)
    for section in ("server", "browser", "theme"):
        for key, value in ours[section].items():
            assert shown[section][key] == value, f"{section}.{key}: {shown[section].get(key)!r} != {value!r}"
    # and a value that only our file sets (Streamlit's default is 200 MB)
    assert shown["server"]["maxUploadSize"] == ours["server"]["maxUploadSize"] != 200


def test_an_edit_to_the_root_file_takes_effect(tmp_path):
    """Copy the repo layout (root file + symlink), edit the root file, see the edit."""
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / "streamlit_config.toml").write_text(
        CONFIG.read_text(encoding="utf-8").replace('primaryColor = "', 'primaryColor = "#123456" #', 1),
        encoding="utf-8")
    os.symlink("../streamlit_config.toml", tmp_path / ".streamlit" / "config.toml")
    shown = _config_show(tmp_path)
    assert shown["theme"]["primaryColor"] == "#123456"


@pytest.mark.skipif(not STREAMLIT.exists(), reason="streamlit executable not next to python")
def test_streamlit_executable_present():
    assert STREAMLIT.exists()
