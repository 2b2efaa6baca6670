"""`paddlemix-psa sweep`: the config grid, the Pareto front, error measurement against dense attention, and the
command end to end on small synthetic q/k/v (points JSON and the plot)."""
from __future__ import annotations

import json

import pytest

from paddlemix_psa.app import sweep as sw
from paddlemix_psa.app.plot import png_size
from paddlemix_psa.cli.main import main
from paddlemix_psa.config import DEFAULT_MASK_RATIOS, AttentionConfig


def test_pareto_front_by_hand():
    # (density, error): b dominates c (lower both); a and b trade off; d ties b's density with more error;
    # e equals a exactly (neither dominates the other)
    pts = [(0.2, 0.5), (0.4, 0.1), (0.5, 0.2), (0.4, 0.3), (0.2, 0.5)]
    assert sw.pareto_front(pts) == [True, True, False, False, True]


def test_ratio_families_and_grid():
    assert sw.energy_ratios(0.6) == {k: tuple(v) for k, v in DEFAULT_MASK_RATIOS.items()}
    assert sw.topk_ratios(0.2) == {1: (0.0, 0.2), 2: (0.2, 0.4), 4: (0.4, 0.6), 0: (0.6, 1.0)}
    configs, skipped = sw.sweep_configs(mask_modes=("energybound", "topk"), tau1=(0.6, 0.8), topk=(0.1,),
                                        key_blocks=(32, 16), strides=(16, 32))
    labels = [label for label, _ in configs]
    # tau1 0.6 with key_block 32 and stride 16 is the default config: it keeps the name "default"
    assert labels[:2] == ["default", "paper"] and "energybound tau1=0.6 kb=32 s=16" not in labels
    # stride 32 > key_block 16 is not a valid config: reported, not silently dropped
    assert len(skipped) == 3 and all("xattn_stride" in s and "kb=16 s=32" in s for s in skipped)
    assert len(configs) == 2 + (2 * 4 - 1 - 2) + (4 - 1)
    with pytest.raises(ValueError, match="--mask-modes"):
        sw.sweep_configs(mask_modes=("thresholdbound",))


def test_errors_are_measured_against_dense():
    case = sw.synthetic_case(256, heads=2, kv_heads=1, head_dim=64)
    full = AttentionConfig(query_block=64, mask_ratios={1: (0.0, 1.0)})        # every block at level 1
    sparse = AttentionConfig(query_block=64, dense_tail_tokens=0, mask_mode="topk", mask_ratios=sw.topk_ratios(0.1))
    dense_pt, sparse_pt = sw.run_sweep(case, [("full", full), ("sparse", sparse)], progress=False)
    assert dense_pt["density"] == 1.0 and dense_pt["rel_l2"] < 1e-5 and dense_pt["cosine"] > 1 - 1e-9
    assert sparse_pt["density"] < 0.9 and sparse_pt["rel_l2"] > 1e-3
    assert dense_pt["pareto"] and sparse_pt["pareto"]                 # the two trade density for error


def test_sweep_command_synthetic_json_and_plot(tmp_path, capsys):
    plot, points = tmp_path / "sweep.png", tmp_path / "points.json"
    code = main(["sweep", "--length", "256", "--heads", "2", "--kv-heads", "1", "--tau1", "0.5,0.9",
                 "--topk", "0.2", "--key-blocks", "32", "--strides", "16",
                 "--base-config", '{"query_block": 64, "dense_tail_tokens": 64}',
                 "--plot", str(plot), "--json", str(points), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    data = json.loads(points.read_text())
    pts = data["points"]
    assert len(pts) == 2 + 3                                     # default, paper, 2 energybound + 1 topk
    assert {p["label"] for p in pts} >= {"default", "paper", "topk topk=0.2 kb=32 s=16"}
    for p in pts:
        assert 0.0 < p["density"] <= 1.0 and -1.0 <= p["cosine"] <= 1.0 + 1e-12 and p["rel_l2"] >= 0.0
        assert p["backend"] == "reference" and "time_ms" not in p     # times only on a GPU
        assert AttentionConfig.from_dict(p["config"]).mask_mode == p["mask_mode"]
    assert [p["pareto"] for p in pts] == sw.pareto_front([(p["density"], p["rel_l2"]) for p in pts])
    assert data["case"] == {"source": "synthetic", "length": 256, "heads": 2, "kv_heads": 1, "head_dim": 64,
                            "seed": 0}
    assert png_size(plot) == (1000, 650)
    assert "Pareto front (*)" in out and "plot written to" in out


def test_sweep_command_errors(tmp_path, capsys):
    assert main(["sweep", "--qkv", str(tmp_path / "absent.npz"), "--no-plot"]) == 3
    assert "--qkv" in capsys.readouterr().err
    assert main(["sweep", "--heads", "3", "--kv-heads", "2", "--no-plot"]) == 4
    assert "multiple of --kv-heads" in capsys.readouterr().err
    assert main(["sweep", "--plot", str(tmp_path / "no" / "s.png")]) == 4      # before any work
    assert "--plot" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["sweep", "--tau1", "0.5,1.5"])
    assert e.value.code == 2 and "numbers in (0, 1)" in capsys.readouterr().err
