import platform
import sysconfig
from pathlib import Path


def test_platform_is_the_standard_library_module():
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(platform.__file__).resolve().parent == stdlib
    assert callable(platform.system)


def test_platform_folder_is_not_a_package():
    repo = Path(__file__).resolve().parents[2]
    assert (repo / "platform" / "rayline").is_dir()
    assert not (repo / "platform" / "__init__.py").exists()
