"""Stored profiles: versioning, NAME@V references, YAML export that loads back as a GPU file, and
``--profile`` on ``estimate``."""

from __future__ import annotations

import json

import pytest
import yaml

from autotune.catalog import get_gpu, resolve_gpu
from autotune.errors import SpecError
from autotune.store.profiles import ProfileStore, load_profile, parse_ref, to_yaml
from autotune.store.storage import Storage


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = Storage(url)
    yield url, ProfileStore(store)
    store.close()


def test_versions_increase_and_refs_resolve(db) -> None:
    _, profiles = db
    base = get_gpu("cpu")
    v1 = profiles.add("mycpu", base, "cpu", {"kind": "microbenchmarks", "host": "a"})
    v2 = profiles.add("mycpu", base.model_copy(update={"gemm_eff_max": 0.3}), "cpu", {"kind": "study", "study": "s"})
    assert (v1.version, v2.version) == (1, 2)
    assert profiles.get("mycpu").version == 2 and profiles.get("mycpu@1").fields["gemm_eff_max"] == 0.5
    assert profiles.get("mycpu").gpu().name == "mycpu@2"
    assert profiles.get("mycpu@2").source == {"kind": "study", "study": "s"}
    assert [r["ref"] for r in profiles.list()] == ["mycpu@1", "mycpu@2"]
    assert profiles.add("other", base, "cpu", {}).version == 1


def test_missing_and_malformed_refs(db) -> None:
    _, profiles = db
    with pytest.raises(SpecError, match="no profile 'nope'"):
        profiles.get("nope")
    for bad in ("", "a@b", "@1", "x y"):
        with pytest.raises(SpecError, match="NAME or NAME@VERSION"):
            parse_ref(bad)
    assert parse_ref("cpu@12") == ("cpu", 12) and parse_ref("h100.v2") == ("h100.v2", None)


def test_yaml_export_round_trips_as_a_gpu_file(db, tmp_path) -> None:
    _, profiles = db
    gpu = get_gpu("cpu").model_copy(update={"layer_overhead_us": 1234.5, "peak_tflops": {"fp32": 0.3, "tf32": 0.3,
                                                                                         "bf16": 0.1, "fp16": 0.02}})
    p = profiles.add("rt", gpu, "cpu", {"kind": "microbenchmarks", "data": [{"kind": "copy"}], "fit": {"a": 1}})
    text = to_yaml(p)
    assert "calibration" in text and "data" not in yaml.safe_load(text)
    path = tmp_path / "rt.yaml"
    path.write_text(text)
    loaded = resolve_gpu(str(path))
    assert loaded.model_dump(exclude={"name"}) == gpu.model_dump(exclude={"name"})


def test_estimate_takes_a_profile(db, cli) -> None:
    url, profiles = db
    slow = get_gpu("cpu").model_copy(update={"layer_overhead_us": 50_000.0})
    profiles.add("slowcpu", slow, "cpu", {"kind": "study"})
    args = ["estimate", "--model", "tiny", "--gpus", "4", "--seq-len", "128", "--global-batch", "8",
            "--precision", "fp32", "--json"]
    code, out, err = cli(args + ["--gpu", "cpu"])
    assert code == 0, err
    plain = json.loads(out)
    code, out, err = cli(args + ["--profile", "slowcpu", "--storage", url])
    assert code == 0, err
    calibrated = json.loads(out)
    assert calibrated["gpu"] == "slowcpu@1"
    # 4 layers x 2 micro-batches x 50 ms of host overhead on the one stage
    assert calibrated["step_time_s"] - plain["step_time_s"] == pytest.approx(4 * 2 * 0.05, rel=1e-6)
    assert load_profile("slowcpu@1", url).layer_overhead_us == 50_000.0
    code, _, err = cli(args + ["--profile", "missing", "--storage", url])
    assert code == 2 and "no profile 'missing'" in err


@pytest.mark.parametrize("args", [["calibrate", "--help"], ["profiles", "--help"], ["profiles", "show", "--help"],
                                  ["profiles", "export", "--help"]])
def test_help(args, cli) -> None:
    code, out, _ = cli(args)
    assert code == 0 and f"autotune {' '.join(args[:-1])}" in out.replace("\n", " ")


def test_profiles_list_and_export_cli(db, cli, tmp_path) -> None:
    url, profiles = db
    profiles.add("c", get_gpu("cpu"), "cpu", {"kind": "microbenchmarks"})
    code, out, err = cli(["profiles", "--storage", url, "--json"])
    assert code == 0, err
    assert [r["ref"] for r in json.loads(out)] == ["c@1"]
    target = tmp_path / "c.yaml"
    code, _, err = cli(["profiles", "export", "c@1", "-o", str(target), "--storage", url])
    assert code == 0, err
    assert resolve_gpu(str(target)).gemm_eff_max == get_gpu("cpu").gemm_eff_max
