"""`paddlemix-psa eval`: data layouts and adapters, prompt and answer extraction, the summary arithmetic
(Wilson and exact McNemar against hand-computed values), and end-to-end runs on the tiny model with a generated
mini dataset (JSONL schema, bad items, resumption, exit codes)."""
from __future__ import annotations

import json

import pytest

from paddlemix_psa.app import evaluation as ev
from paddlemix_psa.app.samples import make_sample_video
from paddlemix_psa.app.tiny import TINY_PSA_CONFIG
from paddlemix_psa.cli.main import main
from paddlemix_psa.config import AttentionConfig

OPTIONS = ["A. a red square", "B. a blue disc", "C. the sun", "D. nothing moves"]


def _videomme_records():
    return [
        {"videoID": "clip0", "question_id": "001-1", "duration": "short", "question": "What moves left to right?",
         "options": OPTIONS, "answer": "A"},
        {"videoID": "clip1", "question_id": "002-1", "duration": "medium", "question": "What bounces?",
         "options": OPTIONS, "answer": "B"},
        {"videoID": "clip2", "question_id": "003-1", "duration": "long", "question": "What stays still?",
         "options": OPTIONS, "answer": "C"},
    ]


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """Three generated clips, one corrupt file; the questions in the Video-MME layout (JSON, JSONL, parquet)
    and in a LongVideoBench-like layout."""
    root = tmp_path_factory.mktemp("mini")
    videos = root / "videos"
    videos.mkdir()
    for i in range(3):
        make_sample_video(videos / f"clip{i}.mp4", seconds=2.0, fps=4, width=336, height=252)
    (videos / "corrupt.mp4").write_bytes(b"this is not an mp4 file")
    recs = _videomme_records()
    (root / "videomme.json").write_text(json.dumps(recs))
    (root / "videomme.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(recs), root / "videomme.parquet")
    bad = recs[:1] + [
        {"videoID": "corrupt", "question_id": "004-1", "duration": "short", "question": "?", "options": OPTIONS,
         "answer": "D"},
        {"videoID": "absent", "question_id": "005-1", "duration": "long", "question": "?", "options": OPTIONS,
         "answer": "A"},
        {"videoID": "clip1", "question_id": "006-1", "duration": "short", "question": "?", "options": OPTIONS,
         "answer": "E"},                                  # no option E: a malformed record
    ]
    (root / "with_bad.json").write_text(json.dumps(bad))
    lvb = [{"video_id": f"clip{i}", "id": f"lvb-{i}", "duration_group": 15, "question": r["question"],
            "candidates": [o[3:] for o in OPTIONS], "correct_choice": i} for i, r in enumerate(recs)]
    (root / "longvideobench.json").write_text(json.dumps(lvb))
    return root


# ------------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("name", ["videomme.json", "videomme.jsonl", "videomme.parquet"])
def test_videomme_layout_in_every_format(mini, name):
    items, bad = ev.load_items(mini / name, video_dir=mini / "videos")
    assert bad == []
    assert [i.item_id for i in items] == ["001-1", "002-1", "003-1"]
    assert [i.duration for i in items] == ["short", "medium", "long"]
    assert [i.answer for i in items] == ["A", "B", "C"]
    assert items[0].options == tuple(OPTIONS) and items[0].letters == "ABCD"
    assert items[1].video_path == str(mini / "videos" / "clip1.mp4")


def test_longvideobench_adapter_maps_fields_and_labels_options(mini):
    items, bad = ev.load_items(mini / "longvideobench.json", video_dir=mini / "videos", adapter="longvideobench")
    assert bad == []
    assert [i.item_id for i in items] == ["lvb-0", "lvb-1", "lvb-2"]
    assert [i.answer for i in items] == ["A", "B", "C"]             # correct_choice 0, 1, 2
    assert items[0].options == tuple(OPTIONS)                       # unlabelled candidates get "A. " labels
    assert items[0].duration == "15" and items[2].video_path.endswith("clip2.mp4")


def test_mvbench_adapter_answer_text_and_field_override(tmp_path):
    recs = [{"video": "x/clip.avi", "question": "Q?", "candidates": ["left", "right", "up"], "answer": "right",
             "qid": "m1"}]
    path = tmp_path / "mv.json"
    path.write_text(json.dumps(recs))
    items, bad = ev.load_items(path, video_dir=tmp_path, adapter="mvbench", fields=["question_id=qid"])
    assert bad == [] and items[0].item_id == "m1" and items[0].answer == "B" and items[0].letters == "ABC"
    assert items[0].video_path == str(tmp_path / "x" / "clip.avi")  # a name with a suffix is used as is
    assert items[0].duration == "unknown"


def test_malformed_records_are_reported_not_fatal(mini):
    items, bad = ev.load_items(mini / "with_bad.json", video_dir=mini / "videos")
    assert [i.item_id for i in items] == ["001-1", "004-1", "005-1"]
    assert len(bad) == 1 and bad[0].item_id == "006-1" and "neither one of the letters ABCD" in bad[0].error
    got = [ev.parse_record(r, 0, ev.field_map(), mini) for r in
           ({"videoID": "v"}, ["not", "an", "object"], {**_videomme_records()[0], "options": "A. x"})]
    assert all(isinstance(g, ev.BadRecord) for g in got)
    assert "missing field(s)" in got[0].error and "not an object" in got[1].error and "list" in got[2].error


def test_duplicate_ids_and_bad_files(tmp_path):
    rec = _videomme_records()[0]
    (tmp_path / "dup.json").write_text(json.dumps([rec, rec]))
    items, bad = ev.load_items(tmp_path / "dup.json")
    assert len(items) == 1 and "duplicate question id" in bad[0].error
    (tmp_path / "obj.json").write_text("{}")
    (tmp_path / "broken.json").write_text("[{")
    (tmp_path / "data.csv").write_text("a,b")
    for name, msg in (("obj.json", "expected a JSON list"), ("broken.json", "not valid JSON"),
                      ("data.csv", "unsupported file type"), ("absent.json", "not found")):
        with pytest.raises(ev.EvalDataError, match=msg):
            ev.read_records(tmp_path / name)
    with pytest.raises(ValueError, match="--field 'nokey' is invalid"):
        ev.field_map("videomme", ["nokey"])
    with pytest.raises(ValueError, match="--adapter 'x' is invalid: valid adapters are"):
        ev.field_map("x")


# ------------------------------------------------------------------------------------------ prompt, answers
def test_prompt_is_the_video_mme_prompt():
    item = ev.EvalItem("1", "v", "v.mp4", "short", "What moves?", tuple(OPTIONS[:2]), "A")
    assert ev.build_prompt(item) == ("What moves?\nA. a red square\nB. a blue disc\n"
                                     "Answer with the option's letter from the given choices directly.")


@pytest.mark.parametrize("reply,expected", [
    ("The answer is (B).", "B"),
    ("b", "B"),
    ("(c).", "C"),
    ("D", "D"),
    ("Answer: C. the sun", "C"),
    ("B. a blue disc, because it bounces", "B"),
    ("a dog is running", None),        # lowercase "a" in a sentence is an article, not an option
    ("I don't know", None),
    ("E", None),                       # not an option letter
    ("", None),
    ("\x1f\ufffd\ufffd", None),        # what the tiny random model says
])
def test_extract_letter_tricky_replies(reply, expected):
    assert ev.extract_letter(reply, "ABCD") == expected


# ------------------------------------------------------------------------------------------ statistics
def test_wilson_interval_hand_computed():
    # z = 1.959964, z^2 = 3.841458881
    # 7/10: p = .7, denom = 1 + z^2/10 = 1.384145888; centre = (.7 + z^2/20) / denom = .892072944 / 1.384145888
    #   = .644493439; half = z * sqrt(.7*.3/10 + z^2/400) / denom = 1.959964 * sqrt(.030603647) / 1.384145888
    #   = .247715294  ->  [.396778145, .892208733]
    lo, hi = ev.wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778145, abs=1e-8) and hi == pytest.approx(0.892208733, abs=1e-8)
    # 0/6: centre = half = (z^2/12) / (1 + z^2/6) -> [0, z^2 / (6 + z^2)] = [0, 3.841458881 / 9.841458881]
    assert ev.wilson_interval(0, 6) == pytest.approx((0.0, 0.390334292), abs=1e-8)
    # 3/4: denom = 1 + z^2/4 = 1.96036472; centre = (.75 + z^2/8) / denom = 1.23018236 / 1.96036472 = .62752729;
    #   half = z * sqrt(.75*.25/4 + z^2/64) / denom = 1.959964 * sqrt(.106897795) / 1.96036472 = .32688545
    assert ev.wilson_interval(3, 4) == pytest.approx((0.300641840, 0.954412740), abs=1e-8)
    assert ev.wilson_interval(0, 0) is None


def test_mcnemar_exact_hand_computed():
    # b=1, c=6: n=7, P(X<=1) = (C(7,0) + C(7,1)) / 2^7 = 8/128; two-sided 16/128
    assert ev.mcnemar_exact(1, 6) == pytest.approx(0.125, abs=1e-15)
    assert ev.mcnemar_exact(6, 1) == pytest.approx(0.125, abs=1e-15)
    # b=0, c=5: 2 * 1/32
    assert ev.mcnemar_exact(0, 5) == pytest.approx(0.0625, abs=1e-15)
    # b=1, c=3: 2 * (1 + 4)/16 = 0.625
    assert ev.mcnemar_exact(1, 3) == pytest.approx(0.625, abs=1e-15)
    # b=3, c=3: 2 * (1 + 6 + 15 + 20)/64 = 1.3125 -> capped at 1; no discordant pair -> 1
    assert ev.mcnemar_exact(3, 3) == 1.0 and ev.mcnemar_exact(0, 0) == 1.0


def _rec(i, mode, correct, duration, **extra):
    return {"item_id": f"i{i}", "mode": mode, "duration": duration, "correct": bool(correct),
            "no_letter": False, "prefill_s": 1.0, "sparsity": None, "error": None, **extra}


def test_running_accuracy_postfix():
    recs = [_rec(0, "dense", 1, "short"), _rec(1, "dense", 0, "short"), _rec(0, "psa", 1, "short"),
            _rec(1, "psa", 0, "short", error="video: x")]
    assert ev.running_accuracy(recs, ("dense", "psa")) == "dense=0.50 psa=1.00"
    assert ev.running_accuracy([], ("dense", "psa")) == "dense=- psa=-"


def test_summary_arithmetic():
    dense = [1, 1, 1, 0, 1, 0, 0, 0]
    psa = [1, 1, 0, 1, 1, 1, 1, 0]
    durs = ["short"] * 4 + ["long"] * 4
    recs = [_rec(i, "dense", c, d, prefill_s=2.0) for i, (c, d) in enumerate(zip(dense, durs))]
    recs += [_rec(i, "psa", c, d, sparsity=0.5 + 0.05 * i) for i, (c, d) in enumerate(zip(psa, durs))]
    recs.insert(0, _rec(7, "psa", 1, "long", error="RuntimeError: boom"))     # superseded by the later record
    recs += [_rec(8, "dense", 1, "medium", no_letter=False, prefill_s=2.0),
             _rec(8, "psa", 0, "medium", error="video: input not found")]    # an error is not scored
    s = ev.summarize(recs)
    d, p = s["modes"]["dense"], s["modes"]["psa"]
    assert (d["overall"]["n"], d["overall"]["correct"]) == (9, 5)             # i0..i8
    assert (p["overall"]["n"], p["overall"]["correct"], p["errors"]) == (8, 6, 1)
    assert list(d["by_duration"]) == ["short", "medium", "long"]
    assert d["by_duration"]["short"]["accuracy"] == 0.75 and d["by_duration"]["long"]["accuracy"] == 0.25
    assert d["by_duration"]["short"]["ci95"] == pytest.approx([0.300641840, 0.954412740], abs=1e-8)
    # 1/4 is the mirror image of 3/4: [1 - .954412740, 1 - .300641840]
    assert d["by_duration"]["long"]["ci95"] == pytest.approx([0.045587260, 0.699358160], abs=1e-8)
    assert p["by_duration"]["long"]["correct"] == 3
    # paired over i0..i7: dense only right i2 (b=1); PSA only right i3, i5, i6 (c=3); p = 2*(1+4)/16
    pr = s["paired"]
    assert (pr["n"], pr["dense_only_correct"], pr["psa_only_correct"]) == (8, 1, 3)
    assert pr["difference"] == pytest.approx((6 - 4) / 8) and pr["mcnemar_p"] == pytest.approx(0.625)
    # mean sparsity (0.5 + 0.05 i for i = 0..7) = 0.5 + 0.05 * 3.5 = 0.675; prefill 2.0 s dense, 1.0 s PSA
    assert p["mean_sparsity"] == pytest.approx(0.675) and p["items_with_psa"] == 8
    assert d["mean_prefill_s"] == 2.0 and p["mean_prefill_s"] == 1.0
    text = ev.format_summary(s)
    assert "PSA - dense = +0.250" in text and "exact McNemar p = 0.625" in text and "[0.301, 0.954]" in text


# ------------------------------------------------------------------------------------------ end to end
RECORD_TYPES = {"schema": int, "item_id": str, "mode": str, "video_id": str, "duration": str, "answer": str,
                "reply": str, "pred": (str, type(None)), "correct": bool, "no_letter": bool, "prompt_tokens": int,
                "new_tokens": int, "prefill_s": float, "decode_s": float, "frames": int, "psa_calls": int,
                "sparsity": (float, type(None)), "density": (float, type(None)), "fallbacks": dict,
                "model": str, "psa_config_id": (str, type(None)), "error": type(None)}


def _eval(mini, out, *extra):
    return main(["eval", "--data", str(mini / "with_bad.json"), "--video-dir", str(mini / "videos"),
                 "--model", "tiny", "--max-frames", "4", "--max-new-tokens", "3", "--out", str(out), "--quiet",
                 *extra])


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_eval_tiny_end_to_end_schema_errors_and_resume(mini, tmp_path, capsys):
    out = tmp_path / "res.jsonl"
    assert _eval(mini, out) == 0
    text = capsys.readouterr().out
    recs = _lines(out)
    assert len(recs) == 4 * 2                               # 3 items + 1 malformed record, two modes each
    good = [r for r in recs if r["error"] is None]
    assert {(r["item_id"], r["mode"]) for r in good} == {("001-1", "dense"), ("001-1", "psa")}
    for r in good:
        assert set(r) == set(RECORD_TYPES)
        for key, typ in RECORD_TYPES.items():
            assert isinstance(r[key], typ), (key, r[key])
        assert r["no_letter"] == (r["pred"] is None) and r["correct"] == (r["pred"] == "A")
    psa = next(r for r in good if r["mode"] == "psa")
    assert psa["psa_calls"] == 2 and 0.0 < psa["sparsity"] < 1.0 and psa["fallbacks"]["decode"] >= 2
    errors = {(r["item_id"], r["mode"]): r["error"] for r in recs if r["error"] is not None}
    assert errors[("004-1", "psa")].startswith("video: not a readable video")
    assert errors[("005-1", "dense")].startswith("video: input not found")
    assert "neither one of the letters" in errors[("006-1", "dense")]
    summary = json.loads((tmp_path / "res.summary.json").read_text())
    assert summary["modes"]["dense"]["overall"]["n"] == 1 and summary["modes"]["psa"]["errors"] == 3
    assert summary["paired"]["n"] == 1 and summary["model"] == "tiny" and "meaningless" in summary["note"]
    assert summary["psa_config_id"] == psa["psa_config_id"] == ev.config_id(AttentionConfig.coerce(TINY_PSA_CONFIG))
    assert "95% CI (Wilson)" in text and "exact McNemar p" in text

    # resume: nothing done is redone; errors (video problems) are retried, an identical malformed record is not
    assert _eval(mini, out) == 0
    assert "runs: 0 new, 4 already done, 4 errors" in capsys.readouterr().out
    # a crash cut the last line and lost one result: only that one is redone
    lines = [x for x in out.read_text().splitlines() if '"001-1", "mode": "psa"' not in x]
    out.write_text("\n".join(lines) + '\n{"item_id": "001-1", "mo')
    assert _eval(mini, out, "--modes", "psa") == 0
    assert "runs: 1 new" in capsys.readouterr().out
    assert [r["mode"] for r in _lines_ok(out) if r["item_id"] == "001-1"] == ["dense", "psa"]


def _lines_ok(path):
    good = []
    for x in path.read_text().splitlines():
        try:
            r = json.loads(x)
        except json.JSONDecodeError:
            continue
        if r.get("error") is None:
            good.append(r)
    return good


def test_eval_other_layout_and_cli_errors(mini, tmp_path, capsys):
    out = tmp_path / "lvb.jsonl"
    code = main(["eval", "--data", str(mini / "longvideobench.json"), "--video-dir", str(mini / "videos"),
                 "--adapter", "longvideobench", "--model", "tiny", "--limit", "1", "--modes", "dense",
                 "--max-frames", "2", "--max-new-tokens", "2", "--out", str(out), "--quiet"])
    assert code == 0 and [(r["item_id"], r["mode"], r["answer"]) for r in _lines(out)] == [("lvb-0", "dense", "A")]
    capsys.readouterr()
    # another PSA config on the same --out is refused (exit 4), a missing data file is bad input (exit 3)
    psa_out = tmp_path / "psa.jsonl"
    psa_out.write_text(json.dumps({"item_id": "lvb-0", "mode": "psa", "model": "tiny", "psa_config_id": "other",
                                   "error": None, "correct": True}) + "\n")
    assert main(["eval", "--data", str(mini / "longvideobench.json"), "--adapter", "longvideobench",
                 "--model", "tiny", "--out", str(psa_out), "--quiet"]) == 4
    assert "another --psa-config" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "none.json"), "--model", "tiny", "--quiet"]) == 3
    assert "--data not found" in capsys.readouterr().err
    assert main(["eval", "--data", str(mini / "videomme.json"), "--field", "bogus=x", "--model", "tiny"]) == 4
    assert "--field 'bogus=x' is invalid" in capsys.readouterr().err
    assert main(["eval", "--data", str(mini / "videomme.json"), "--model", "tiny",
                 "--out", str(tmp_path / "no" / "r.jsonl")]) == 4             # checked before the model loads
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["eval", "--data", "x.json", "--modes", "dense,sparse"])
    assert e.value.code == 2 and "expected a comma list of distinct modes" in capsys.readouterr().err


def test_unexpected_decoder_failure_is_that_items_error(mini, tmp_path, monkeypatch):
    from paddlemix_psa.app import media
    from paddlemix_psa.app.inference import QwenVLInference

    real = media.load_video

    def flaky(path, **kw):
        if str(path).endswith("clip1.mp4"):
            raise RuntimeError("decoder crashed\nsecond line")
        return real(path, **kw)

    monkeypatch.setattr(media, "load_video", flaky)
    items, bad = ev.load_items(mini / "videomme.json", video_dir=mini / "videos", limit=2)
    app = QwenVLInference(use_psa=True, model="tiny", quiet=True)
    out = tmp_path / "r.jsonl"
    counts = ev.evaluate(app, items, bad, out, modes=("psa",), max_frames=2, max_new_tokens=1, progress=False)
    assert counts == {"new": 1, "skipped": 0, "errors": 1}
    recs = {r["item_id"]: r for r in _lines(out)}
    assert recs["002-1"]["error"] == "video: RuntimeError: decoder crashed"
    assert recs["001-1"]["error"] is None
