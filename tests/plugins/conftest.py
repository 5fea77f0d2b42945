import sys
import textwrap

import pytest


@pytest.fixture
def plugin_distribution(tmp_path, monkeypatch):
    """install(dist, entry_point, module, source): a package whose dist-info declares `entry_point` in
    group `corral`, put on sys.path as if installed (CORRAL_PLUGINS unset); its module is forgotten after."""
    modules = []

    def install(dist: str, entry_point: str, module: str, source: str, version: str = "0.0.1"):
        (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[corral]\n{entry_point} = {module}\n")
        modules.append(module)

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("CORRAL_PLUGINS", raising=False)
    yield install
    for module in modules:
        sys.modules.pop(module, None)
