"""Launching on several nodes: the Ray runtime environment that ships echovl, the start-up check of every node (its
imports, files and echovl code hash), and the ``worker.actor.echo`` / ``echo:`` conflict. A real Ray cluster is
started only with ECHOVL_RAY_TESTS=1 (about 25 s on a 2-core machine); the rest runs without Ray."""

import os
from pathlib import Path

import pytest

pytest.importorskip("verl", reason="EasyR1 (package verl) is not installed: pip install -e '.[easyr1]'")

from tests.easyr1_stubs import install_vllm_stub  # noqa: E402

install_vllm_stub()

import ray  # noqa: E402

import echovl  # noqa: E402
import echovl.easyr1.worker  # noqa: E402,F401  (imported under the vllm stub, as node_report imports it)
from echovl.easyr1 import cluster  # noqa: E402
from echovl.easyr1.config import ConfigError, load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GEO3K = "config=configs/geo3k_grpo_echo.yaml"


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)


# ------------------------------------------------------------------------------------------- config


def test_a_worker_echo_value_that_differs_from_the_echo_section_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config([GEO3K, "worker.actor.echo.coef=0.01"])
    assert str(error.value).startswith(
        "worker.actor.echo.coef=0.01 in the command line conflicts with echo.coef=0.001"
    )
    assert "set echo.coef" in str(error.value)
    config = load_config([GEO3K, "worker.actor.echo.coef=0.01", "echo.coef=0.01"])  # the same value: fine
    assert config.worker.actor.echo.coef == config.echo.coef == 0.01
    path = tmp_path / "run.yaml"
    path.write_text("worker:\n  actor:\n    echo:\n      scope: degenerate\n")
    with pytest.raises(
        ConfigError, match=rf"worker\.actor\.echo\.scope='degenerate' in {path} conflicts with echo\.scope='all'"
    ):
        load_config([f"config={path}"])
    assert load_config([f"config={path}", "echo.scope=degenerate"]).worker.actor.echo.scope == "degenerate"


# ------------------------------------------------------------------------------------------- runtime environment


def test_runtime_env_ships_this_echovl_package_to_every_node():
    env = cluster.ray_runtime_env()
    (package,) = env["py_modules"]
    assert Path(package) == Path(echovl.__file__).parent and (Path(package) / "easyr1" / "worker.py").is_file()
    assert "__pycache__" in env["excludes"] and "*.pyc" in env["excludes"]
    assert env["env_vars"] == cluster.EASYR1_ENV and "PYTHONPATH" not in env["env_vars"]


def test_run_paths_are_the_local_files_the_config_names(tmp_path):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    config = load_config([GEO3K, f"data.train_files={data}@train", "data.val_files=hub/dataset@test"])
    paths = cluster.run_paths(config)
    assert str(data) in paths
    assert (
        str(ROOT / "echovl/reward/math.py") in paths and str(ROOT / "configs/format_prompt/math_think.jinja") in paths
    )
    assert not any("Qwen" in p or "hub/dataset" in p for p in paths)  # hub names are not local paths


def test_node_report_names_missing_paths_and_import_errors(tmp_path, monkeypatch):
    present = tmp_path / "here.txt"
    present.write_text("x")
    report = cluster.node_report([str(present), str(tmp_path / "gone.parquet")])
    assert report["missing"] == [str(tmp_path / "gone.parquet")] and report["error"] is None
    monkeypatch.setattr(cluster, "WORKER_MODULE", "echovl_no_such_module")
    assert "cannot import echovl_no_such_module: ModuleNotFoundError" in cluster.node_report([])["error"]


def test_package_hash_covers_the_python_files_and_their_paths(tmp_path):
    a, b = tmp_path / "a" / "echovl", tmp_path / "b" / "echovl"
    for folder in (a, b):
        (folder / "easyr1").mkdir(parents=True)
        (folder / "__init__.py").write_text("x = 1\n")
        (folder / "easyr1" / "worker.py").write_text("y = 2\n")
    digest = cluster.package_hash(a)
    assert len(digest) == 12 and int(digest, 16) >= 0 and cluster.package_hash(b) == digest
    (b / "README.md").write_text("not code")  # only .py files count
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "stale.py").write_text("z = 3\n")
    assert cluster.package_hash(b) == digest
    (b / "easyr1" / "worker.py").write_text("y = 3\n")  # one byte of code
    assert cluster.package_hash(b) != digest
    (b / "easyr1" / "worker.py").rename(b / "worker.py")  # same bytes, another path
    (b / "worker.py").write_text("y = 2\n")
    assert cluster.package_hash(b) != digest


def test_node_report_names_the_echovl_it_imports():
    report = cluster.node_report([])
    assert Path(report["echovl"]) == Path(echovl.__file__).resolve().parent == cluster.PACKAGE_DIR
    assert report["echovl_hash"] == cluster.package_hash(cluster.PACKAGE_DIR)


def _node(address, alive=True):
    return {"NodeManagerAddress": address, "NodeID": f"id-{address}", "Alive": alive}


def test_check_nodes_fails_with_what_each_node_lacks(monkeypatch, tmp_path):
    data = tmp_path / "train.parquet"
    data.write_bytes(b"")
    config = load_config([GEO3K, f"data.train_files={data}", f"data.val_files={data}"])
    reports = {
        "id-10.0.0.1": {"host": "head", "missing": [], "error": None},
        "id-10.0.0.2": {"host": "gpu2", "missing": [str(data)], "error": None},
        "id-10.0.0.3": {
            "host": "gpu3",
            "missing": [],
            "error": "cannot import echovl.easyr1.worker: No module named 'verl'",
        },
    }
    asked = []

    def report_on_node(node_id, paths):
        asked.append((node_id, paths))
        return reports[node_id]

    monkeypatch.setattr(cluster, "_report_on_node", report_on_node)
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    nodes = [_node("10.0.0.1"), _node("10.0.0.2"), _node("10.0.0.3"), _node("10.0.0.4", alive=False)]
    with pytest.raises(cluster.NodeCheckError) as error:
        cluster.check_nodes(config, nodes)
    message = str(error.value)
    assert [node for node, _ in asked] == ["id-10.0.0.1", "id-10.0.0.2", "id-10.0.0.3"]  # alive nodes only
    assert asked[0][1] == cluster.run_paths(config)
    assert "10.0.0.1" not in message
    assert f"node 10.0.0.2 (gpu2): missing {data}" in message
    assert "node 10.0.0.3 (gpu3): cannot import echovl.easyr1.worker: No module named 'verl'" in message
    assert "same path on every node" in message
    reports["id-10.0.0.2"]["missing"], reports["id-10.0.0.3"]["error"] = [], None
    cluster.check_nodes(config, nodes)  # every node ready: no error
    asked.clear()
    cluster.check_nodes(config, nodes[:1])  # one node: nothing to check
    assert asked == []


def test_check_nodes_fails_where_a_node_imports_other_echovl_code(monkeypatch, tmp_path):
    config = load_config([GEO3K])
    here = cluster.package_hash(cluster.PACKAGE_DIR)
    reports = {
        "id-10.0.0.1": {"host": "head", "missing": [], "error": None, "echovl": "/ship/echovl", "echovl_hash": here},
        "id-10.0.0.2": {
            "host": "gpu2",
            "missing": [],
            "error": None,
            "echovl": "/repo/echovl",
            "echovl_hash": "0" * 12,
        },
    }
    monkeypatch.setattr(cluster, "_report_on_node", lambda node_id, paths: reports[node_id])
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    monkeypatch.chdir(tmp_path)
    nodes = [_node("10.0.0.1"), _node("10.0.0.2")]
    with pytest.raises(cluster.NodeCheckError) as error:
        cluster.check_nodes(config, nodes)
    message = str(error.value)
    assert "10.0.0.1" not in message
    assert (
        f"node 10.0.0.2 (gpu2): imports echovl from /repo/echovl (code hash 000000000000), not the launching code "
        f"{cluster.PACKAGE_DIR} (code hash {here})" in message
    )
    assert f"Ray puts the launch folder ({tmp_path}) on its workers' import path" in message
    assert "Make that checkout the same as the launching one (or remove it)" in message
    reports["id-10.0.0.2"]["echovl_hash"] = here
    cluster.check_nodes(config, nodes)  # the same code, wherever it lies: no error


@pytest.mark.skipif(os.environ.get("ECHOVL_RAY_TESTS") != "1", reason="starts a Ray cluster: ECHOVL_RAY_TESTS=1")
def test_a_ray_worker_imports_the_shipped_package_and_reports_its_node(tmp_path, monkeypatch):
    monkeypatch.delenv("PYTHONPATH", raising=False)  # as on another node: this checkout is not on the path
    monkeypatch.chdir(tmp_path)  # (Ray also puts the driver's working folder on its workers' path)
    ray.init(num_cpus=1, runtime_env=cluster.ray_runtime_env(), include_dashboard=False, log_to_driver=False)
    try:

        @ray.remote(num_cpus=0)
        def imported_from():
            import echovl as shipped

            return shipped.__file__

        path = Path(ray.get(imported_from.remote()))
        assert "py_modules_files" in str(path) and path.parts[-2:] == ("echovl", "__init__.py")
        shipped = path.parent / "easyr1" / "cluster.py"
        assert shipped.read_bytes() == Path(cluster.__file__).read_bytes()  # this checkout's code, as launched
        (node,) = [n for n in ray.nodes() if n["Alive"]]
        report = ray.get(cluster._report_on_node(node["NodeID"], [str(tmp_path / "gone")]))
        assert report["missing"] == [str(tmp_path / "gone")]
        assert "py_modules_files" in report["echovl"]  # the shipped copy has the launching code's hash
        assert report["echovl_hash"] == cluster.package_hash(cluster.PACKAGE_DIR), _code_differences(
            Path(report["echovl"]), cluster.PACKAGE_DIR
        )
    finally:
        ray.shutdown()


def _code_differences(shipped: Path, here: Path) -> str:
    """Which .py files differ between the shipped copy and this checkout (to say why their hashes differ)."""

    def code(folder):
        return {
            p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*.py")
            if "__pycache__" not in p.parts
        }

    a, b = code(shipped), code(here)
    return "the shipped copy differs from this checkout in: " + ", ".join(
        sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    )
