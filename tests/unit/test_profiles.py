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


# --- stack profiles -----------------------------------------------------------------------------------------


def test_stack_profiles_have_their_own_kind(db) -> None:
    _, profiles = db
    from autotune.catalog import get_stack

    s1 = profiles.add("fast", get_stack("eager").model_copy(update={"layer_host_us": 30.0}), "eager", {"kind": "study"})
    assert (s1.ref, s1.profile_kind) == ("fast@1", "stack")
    assert profiles.get("fast").stack().layer_host_us == 30.0 and profiles.get("fast").stack().name == "fast@1"
    profiles.add("mycpu", get_gpu("cpu"), "cpu", {})
    assert [(r["ref"], r["profile_kind"]) for r in profiles.list()] == [("fast@1", "stack"), ("mycpu@1", "gpu")]
    with pytest.raises(SpecError, match="'fast' already names a stack profile"):
        profiles.add("fast", get_gpu("cpu"), "cpu", {})
    with pytest.raises(SpecError, match="fast@1 is a stack profile, not a gpu profile"):
        profiles.get("fast").gpu()
    with pytest.raises(SpecError, match=r"no profile 'fast' in .* \(stored: mycpu@1;"):
        profiles.get("fast", kind="gpu")
    with pytest.raises(SpecError, match=r"training.stack: no stack profile 'mycpu' in .* \(stored: fast@1;"):
        profiles.get("mycpu", kind="stack", field="training.stack")


def test_a_profiles_table_from_before_stack_profiles_keeps_loading(tmp_path) -> None:
    """The table as the previous release created it (no profile_kind column), with one GPU profile row."""
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'old.db'}"
    Storage(url).close()  # the studies' tables
    engine = sa.create_engine(url)
    fields = json.dumps(get_gpu("cpu").model_dump(mode="json", exclude={"name"}))
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE autotune_profiles (id INTEGER PRIMARY KEY, name VARCHAR(128), version INTEGER, "
                          "base VARCHAR(128), fields_json TEXT, source_json TEXT, created_at DATETIME, "
                          "UNIQUE (name, version))"))
        c.execute(sa.text("INSERT INTO autotune_profiles (name, version, base, fields_json, source_json) "
                          "VALUES ('old', 1, 'cpu', :f, '{}')"), {"f": fields})
    engine.dispose()
    assert load_profile("old@1", url).gemm_eff_max == get_gpu("cpu").gemm_eff_max
    store = Storage(url)
    assert ProfileStore(store).get("old").profile_kind == "gpu"
    store.close()


def test_stack_yaml_export_loads_back_as_a_stack_file(db, tmp_path) -> None:
    _, profiles = db
    from autotune.catalog import get_stack, resolve_stack

    stack = get_stack("torchtitan-eager").model_copy(update={"elementwise_factor": 0.77})
    text = to_yaml(profiles.add("tt", stack, "torchtitan-eager", {"kind": "study", "study": "s"}))
    assert "training.stack" in text
    path = tmp_path / "tt.yaml"
    path.write_text(text)
    assert resolve_stack(str(path)).model_dump(exclude={"name"}) == stack.model_dump(exclude={"name"})


def test_training_stack_names_a_stored_profile(db) -> None:
    """``training.stack: NAME@V`` resolves from the storage; NAME is pinned to its latest version; a catalog
    name is left alone; a bad reference is one line naming training.stack."""
    from autotune.catalog import get_stack
    from autotune.spec import parse_spec
    from autotune.study.resolve import pin_stack, resolve

    url, profiles = db
    profiles.add("mine", get_stack("megatron-te").model_copy(update={"layer_host_us": 500.0}), "megatron-te", {})
    profiles.add("mine", get_stack("megatron-te").model_copy(update={"layer_host_us": 900.0}), "megatron-te", {})
    spec = parse_spec({"name": "x", "model": "tiny", "cluster": {"gpu": "h100-sxm"},
                       "training": {"seq_len": 128, "global_batch": 8, "stack": "mine@1"}})
    assert resolve(spec, storage=url).training.stack.layer_host_us == 500.0
    latest = spec.model_copy(update={"training": spec.training.model_copy(update={"stack": "mine"})})
    assert pin_stack(latest, storage=url).training.stack == "mine@2"
    assert pin_stack(spec, "mine", storage=url).training.stack == "mine@2"  # submit --stack-profile
    catalog = spec.model_copy(update={"training": spec.training.model_copy(update={"stack": "eager"})})
    assert pin_stack(catalog, storage=url).training.stack == "eager"
    assert resolve(catalog, storage=url).training.stack == get_stack("eager")
    for bad, text in (("mine@7", "training.stack: no stack profile 'mine@7'"),
                      ("nope", "training.stack: no stack profile 'nope'")):
        wrong = spec.model_copy(update={"training": spec.training.model_copy(update={"stack": bad})})
        with pytest.raises(SpecError, match=text):
            resolve(wrong, storage=url)
    with pytest.raises(SpecError, match="training.stack: 'mine' is no catalog stack or file"):
        pin_stack(latest, storage=f"sqlite:///{url.rsplit('/', 1)[0]}/missing.db")
    from autotune.results.reproduce import estimate_command

    printed = estimate_command(spec, {"tp": 1, "nodes": 1}, storage_url=url)
    assert " --stack mine@1 " in printed and f" --storage {url}" in printed and "--profile" not in printed


def test_estimate_takes_a_stored_stack(db, cli) -> None:
    """A stored eager stack with 1 s of host time per layer: the tiny model (4 layers) at 4 GPUs, global batch
    8, micro-batch 1 -> 2 micro-batches a rank, so its layers alone take 4 x 2 x 1 s = 8 s; everything else
    (output layer, gradient all-reduce, optimizer) is what the catalog eager stack predicts besides its layers."""
    from autotune.catalog import get_stack

    url, profiles = db
    profiles.add("hosty", get_stack("eager").model_copy(update={"layer_host_us": 1e6}), "eager", {})
    args = ["estimate", "--model", "tiny", "--gpu", "cpu", "--gpus", "4", "--seq-len", "128", "--global-batch", "8",
            "--precision", "fp32", "--json"]
    code, out, err = cli(args + ["--stack", "eager"])
    assert code == 0, err
    plain = json.loads(out)
    code, out, err = cli(args + ["--stack", "hosty@1", "--storage", url])
    assert code == 0, err
    slow = json.loads(out)
    assert slow["stack"] == "hosty@1"
    assert 8.0 < slow["step_time_s"] < 8.0 + plain["step_time_s"]
    code, _, err = cli(args + ["--stack", "hosty@2", "--storage", url])
    assert code == 2 and "--stack: no stack profile 'hosty@2'" in err and len(err.strip().splitlines()) == 1
