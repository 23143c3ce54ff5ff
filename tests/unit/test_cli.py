"""CLI: --help of every command, one-line errors with exit 2, the estimate JSON object."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autotune.cli import app

COMMANDS = sorted(c.name for c in app.registered_commands)



def test_every_command_is_registered() -> None:
    assert {"estimate", "submit", "resume", "best", "studies", "trials", "export", "report"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command: str, cli) -> None:
    code, out, _ = cli([command, "--help"])
    assert code == 0 and "Usage" in out and f"autotune {command}" in out.replace("\n", " ")


BASE = ["estimate", "--model", "llama3-8b", "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "8192",
        "--global-batch", "512"]


def test_estimate_json_keys_and_arithmetic(cli) -> None:
    code, out, err = cli(BASE + ["--tp", "2", "--pp", "2", "--zero", "1", "--micro-batch", "2", "--tokens", "1e12",
                                 "--json"])
    assert code == 0, err
    d = json.loads(out)
    cfg = d["config"]
    assert (cfg["dp"], cfg["grad_accum"]) == (2, 128)
    assert cfg["micro_batch"] * cfg["grad_accum"] * cfg["dp"] == 512
    assert d["params"] == 8_030_261_248
    assert set(d["memory_gib"]) == {"weights", "gradients", "optimizer", "activations", "other", "total"}
    # worst rank = stage 0 of tp 2: (16 layers x 218,112,000 + 128,256 x 4,096 embedding) / 2, plus the
    # 16 x 2 x 4,096 replicated norm weights = 2,007,629,824 parameters; bf16 weights 2 B, fp32 main
    # gradients 4 B, Adam fp32 master + moments 12 B sharded over dp=2; 1.5 GiB fixed h100 overhead.
    stage0 = (16 * 218_112_000 + 128_256 * 4096) // 2 + 16 * 2 * 4096 // 2
    assert stage0 == 2_007_629_824
    for key, bytes_per_param in (("weights", 2), ("gradients", 4), ("optimizer", 12 / 2)):
        assert d["memory_gib"][key] == pytest.approx(stage0 * bytes_per_param / 2**30, rel=1e-9)
    assert d["memory_gib"]["other"] == pytest.approx(1.5)
    assert set(d["time_breakdown_s"]) == {"compute", "recompute", "tp_comm", "cp_comm", "ep_comm", "pp_bubble",
                                          "pp_p2p", "dp_comm_exposed", "optimizer"}
    assert d["time_breakdown_s"]["ep_comm"] == 0.0 and "moe_time_s" not in d  # a dense model
    # tokens/s = global batch x seq / step time; training days = tokens / (tokens/s) / 86400
    assert d["tokens_per_s"] == pytest.approx(512 * 8192 / d["step_time_s"])
    steps = -(-1e12 // (512 * 8192))
    assert d["training_days"] == pytest.approx(steps * d["step_time_s"] / 86400)
    assert d["gpu_hours"] == pytest.approx(steps * d["step_time_s"] / 3600 * 8)
    assert isinstance(d["fits"], bool) and d["capacity_gib"] == pytest.approx(79.6 * 0.95)
    assert 0 < d["mfu"] <= d["hfu"] < 1


def test_not_fitting_is_a_valid_answer(cli) -> None:
    code, out, _ = cli(["estimate", "--model", "llama3-70b", "--gpu", "a100-40gb", "--gpus", "8", "--seq-len",
                        "4096", "--global-batch", "64", "--json"])
    assert code == 0 and json.loads(out)["fits"] is False


@pytest.mark.parametrize("extra,message", [
    (["--tp", "3"], "error: tp*pp*cp=3*1*1=3 does not divide gpus=8"),
    (["--recompute", "most"], "error: --recompute: recompute='most' must be one of none, selective, full"),
    (["--precision", "fp9"], "error: --precision: Input should be 'fp32', 'bf16', 'fp16' or 'fp8'"),
    (["--tp", "two"], "error: Invalid value for '--tp'"),
    (["--sp"], "error: sequence_parallel needs tp > 1"),
    (["--gpu", "h100"], "error: --gpu: unknown GPU 'h100' (allowed: a100-40gb"),
    (["--bogus"], "error: No such option: --bogus"),
])
def test_bad_input_one_line_exit_2(extra, message, cli) -> None:
    code, out, err = cli(BASE + extra)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_bad_model_file_and_missing_field(tmp_path, cli) -> None:
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    code, _, err = cli(["estimate", "--model", str(bad), "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "8",
                        "--global-batch", "8"])
    assert code == 2 and err.startswith("error: --model:") and "not valid JSON" in err
    code, _, err = cli(["estimate", "--gpu", "h100-sxm", "--gpus", "8", "--seq-len", "8", "--global-batch", "8"])
    assert code == 2 and err == "error: model: required field is missing\n"


def test_read_commands_on_missing_db_write_nothing(tmp_path, cli) -> None:
    db = tmp_path / "none.db"
    for args in (["studies"], ["best", "x"], ["trials", "x"]):
        code, _, err = cli(args + ["--storage", f"sqlite:///{db}"])
        assert code == 2 and "does not exist" in err
    assert not db.exists()


def test_python_m_autotune() -> None:
    proc = subprocess.run([sys.executable, "-m", "autotune", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "estimate" in proc.stdout
