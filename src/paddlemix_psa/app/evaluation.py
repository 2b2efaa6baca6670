"""Multiple-choice video QA evaluation (Video-MME layout), dense and PSA on the same items.

* `load_items`: a JSON, JSONL or parquet file -> `EvalItem`s; an adapter maps other field names (MVBench- or
  LongVideoBench-like files); a malformed record becomes a `BadRecord` (reported, never fatal).
* `build_prompt` / `extract_letter`: the standard Video-MME prompt and answer rule (first option letter).
* `evaluate`: runs every (item, mode), appending one JSONL record each; a rerun skips what is done.
* `summarize` / `format_summary`: accuracy per duration class with Wilson 95% intervals, and the paired
  PSA - dense difference with the exact McNemar p-value on the discordant items.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import string
from pathlib import Path
from typing import Any, Iterable, Sequence

logger = logging.getLogger("paddlemix_psa")

SCHEMA_VERSION = 1
MODES = ("dense", "psa")
Z95 = 1.959964                    # two-sided 95% normal quantile
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
DURATION_ORDER = ("short", "medium", "long")
FIELD_KEYS = ("video", "question_id", "duration", "question", "options", "answer")
ADAPTERS: dict[str, dict[str, str | None]] = {
    "videomme": {"video": "videoID", "question_id": "question_id", "duration": "duration",
                 "question": "question", "options": "options", "answer": "answer"},
    # MVBench: "video" is a file name, "candidates" unlabelled, "answer" the correct option's text
    "mvbench": {"video": "video", "question_id": None, "duration": None, "question": "question",
                "options": "candidates", "answer": "answer"},
    # LongVideoBench: "correct_choice" is a 0-based index, "duration_group" a length in seconds
    "longvideobench": {"video": "video_id", "question_id": "id", "duration": "duration_group",
                       "question": "question", "options": "candidates", "answer": "correct_choice"},
}
_LABEL = re.compile(r"^\s*\(?([A-Za-z])[.):]\s*(.*)$", re.S)


class EvalDataError(ValueError):
    """The data file (not one record of it) cannot be used; `str()` is one line."""


@dataclasses.dataclass(frozen=True)
class EvalItem:
    item_id: str
    video_id: str
    video_path: str
    duration: str
    question: str
    options: tuple[str, ...]          # "A. text", one per letter
    answer: str                       # a letter

    @property
    def letters(self) -> str:
        return string.ascii_uppercase[:len(self.options)]


@dataclasses.dataclass(frozen=True)
class BadRecord:
    item_id: str
    error: str


# ------------------------------------------------------------------------------------------ loading
def field_map(adapter: str = "videomme", overrides: Sequence[str] = ()) -> dict[str, str | None]:
    """The adapter's field names, with `KEY=NAME` overrides (KEY in FIELD_KEYS)."""
    if adapter not in ADAPTERS:
        raise ValueError(f"--adapter {adapter!r} is invalid: valid adapters are {sorted(ADAPTERS)}")
    fields = dict(ADAPTERS[adapter])
    for text in overrides:
        key, sep, name = text.partition("=")
        if not sep or key.strip() not in FIELD_KEYS or not name.strip():
            raise ValueError(f"--field {text!r} is invalid: expected KEY=NAME with KEY in {list(FIELD_KEYS)}")
        fields[key.strip()] = name.strip()
    return fields


def read_records(path: str | os.PathLike) -> list[Any]:
    """The raw records of a .json (a list), .jsonl or .parquet file."""
    p = Path(path)
    if not p.is_file():
        raise EvalDataError(f"--data not found: {p}")
    suffix = p.suffix.lower()
    try:
        if suffix == ".parquet":
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise EvalDataError("reading parquet needs pyarrow (pip install pyarrow)") from None
            return pq.read_table(p).to_pylist()
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise EvalDataError(f"cannot read --data {p}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - pyarrow raises its own error types for corrupt files
        raise EvalDataError(f"cannot read --data {p}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if suffix == ".jsonl":
        out: list[Any] = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as e:
                    out.append(BadRecord(f"line{n}", f"line {n} is not valid JSON ({e.msg})"))
        return out
    if suffix != ".json":
        raise EvalDataError(f"--data {p.name}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise EvalDataError(f"--data {p} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise EvalDataError(f"--data {p}: expected a JSON list of records, got {type(data).__name__}")
    return data


def _options(raw: Any) -> tuple[str, ...]:
    if isinstance(raw, dict):
        raw = [f"{k}. {raw[k]}" for k in sorted(raw)]
    if isinstance(raw, str) or not hasattr(raw, "__iter__"):
        raise ValueError(f"options must be a list of strings, got {type(raw).__name__}")
    raw = [str(o) for o in raw]
    if not 2 <= len(raw) <= 26:
        raise ValueError(f"expected 2..26 options, got {len(raw)}")
    letters = string.ascii_uppercase[:len(raw)]
    labelled = [_LABEL.match(o) for o in raw]
    if all(m and m.group(1).upper() == letters[i] for i, m in enumerate(labelled)):
        return tuple(f"{letters[i]}. {m.group(2).strip()}" for i, m in enumerate(labelled))
    return tuple(f"{letters[i]}. {o.strip()}" for i, o in enumerate(raw))


def _answer(raw: Any, options: tuple[str, ...]) -> str:
    letters = string.ascii_uppercase[:len(options)]
    if isinstance(raw, int) and not isinstance(raw, bool):
        if 0 <= raw < len(options):
            return letters[raw]
        raise ValueError(f"answer index {raw} is outside 0..{len(options) - 1}")
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"answer must be a letter, an option text or an index, got {raw!r}")
    text = raw.strip()
    bare = text.strip("().: ").upper()
    if len(bare) == 1 and bare in letters:
        return bare
    for i, opt in enumerate(options):
        if text == opt or text == opt[3:]:
            return letters[i]
    raise ValueError(f"answer {raw!r} is neither one of the letters {letters} nor an option's text")


def _video_path(value: str, video_dir: Path) -> str:
    name = value if os.path.splitext(value)[1] else f"{value}.mp4"
    return str(Path(name) if os.path.isabs(name) else video_dir / name)


def parse_record(rec: Any, index: int, fields: dict[str, str | None], video_dir: Path) -> EvalItem | BadRecord:
    """One raw record -> an `EvalItem`, or a `BadRecord` naming what is wrong."""
    if isinstance(rec, BadRecord):
        return rec
    qid_field = fields["question_id"]
    item_id = str(rec.get(qid_field, index)) if isinstance(rec, dict) and qid_field else str(index)
    if not isinstance(rec, dict):
        return BadRecord(item_id, f"record {index} is a {type(rec).__name__}, not an object")
    try:
        missing = [fields[k] for k in ("video", "question", "options", "answer") if fields[k] not in rec]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        options = _options(rec[fields["options"]])
        dur_field = fields["duration"]
        duration = rec.get(dur_field) if dur_field else None
        return EvalItem(item_id=item_id, video_id=str(rec[fields["video"]]),
                        video_path=_video_path(str(rec[fields["video"]]), video_dir),
                        duration="unknown" if duration is None else str(duration),
                        question=str(rec[fields["question"]]).strip(), options=options,
                        answer=_answer(rec[fields["answer"]], options))
    except ValueError as e:
        return BadRecord(item_id, f"record {index} ({item_id}): {e}")


def load_items(path: str | os.PathLike, *, video_dir: str | os.PathLike | None = None,
               adapter: str = "videomme", fields: Sequence[str] = (), limit: int | None = None,
               ) -> tuple[list[EvalItem], list[BadRecord]]:
    """Items (and malformed records) of the first `limit` records; `video_dir` defaults to the file's folder."""
    fmap = field_map(adapter, fields)
    vdir = Path(video_dir) if video_dir is not None else Path(path).parent
    records = read_records(path)[:limit]
    items: list[EvalItem] = []
    bad: list[BadRecord] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        got = parse_record(rec, i, fmap, vdir)
        if isinstance(got, EvalItem) and got.item_id in seen:
            got = BadRecord(f"{got.item_id}#{i}", f"record {i}: duplicate question id {got.item_id!r}")
        if isinstance(got, EvalItem):
            seen.add(got.item_id)
            items.append(got)
        else:
            bad.append(got)
    return items, bad


# ------------------------------------------------------------------------------------------ prompt, answer
def build_prompt(item: EvalItem) -> str:
    """Video-MME's prompt: the question, the options one per line, then the answer instruction."""
    return "\n".join([item.question, *item.options, ANSWER_INSTRUCTION])


def extract_letter(reply: str, letters: str = "ABCD") -> str | None:
    """The first option letter of `reply`, or None.

    A reply that is only a letter (any case, e.g. "b", "(C).") is that letter; otherwise the first capital
    option letter standing alone ("The answer is (B).", "B. a dog"); a lowercase letter inside a sentence
    is an ordinary word ("a dog") and does not count.
    """
    text = reply.strip()
    bare = text.strip(" \t\n()[]{}.,:;!*\"'")
    if len(bare) == 1 and bare.upper() in letters:
        return bare.upper()
    m = re.search(rf"(?<![A-Za-z])([{re.escape(letters)}])(?![A-Za-z])", text)
    return m.group(1) if m else None


# ------------------------------------------------------------------------------------------ results file
def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of an existing results file; an unreadable line (e.g. cut by a crash) is skipped and logged."""
    p = Path(path)
    if not p.exists():
        return []
    out = []
    with open(p, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("paddlemix_psa eval: %s line %d is not valid JSON; ignored (it will be redone)", p, n)
                continue
            if isinstance(rec, dict) and "item_id" in rec and "mode" in rec:
                out.append(rec)
    return out


def latest(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last record per (item_id, mode): a retried item supersedes its earlier error."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for r in records:
        out[(str(r["item_id"]), r["mode"])] = r
    return out


def config_id(config: Any) -> str:
    """A short stable id of an `AttentionConfig` (its fingerprint hashed), stored in every PSA record."""
    return hashlib.sha1(config.fingerprint().encode("utf-8")).hexdigest()[:12]


def check_compatible(records: Iterable[dict[str, Any]], model: str, psa_config_id: str) -> None:
    """Refuse to mix results of another model or PSA config into one file."""
    for r in records:
        if r.get("error") is not None:
            continue
        if r.get("model") != model:
            raise ValueError(f"--out already holds results of model {r.get('model')!r}, not {model!r}: "
                             f"use another --out")
        if r["mode"] == "psa" and r.get("psa_config_id") != psa_config_id:
            raise ValueError("--out already holds PSA results of another --psa-config: use another --out")


def error_record(item_id: str, mode: str, error: str, item: EvalItem | None = None) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "item_id": item_id, "mode": mode,
            "video_id": item.video_id if item else None, "duration": item.duration if item else None,
            "answer": item.answer if item else None, "correct": False, "error": error}


def result_record(item: EvalItem, mode: str, res: Any, summary: Any, fallbacks: dict[str, int], *,
                  model: str, psa_config_id: str) -> dict[str, Any]:
    pred = extract_letter(res.text, item.letters)
    ran = bool(getattr(summary, "valid_pairs", 0))
    return {"schema": SCHEMA_VERSION, "item_id": item.item_id, "mode": mode, "video_id": item.video_id,
            "duration": item.duration, "answer": item.answer, "reply": res.text, "pred": pred,
            "correct": pred == item.answer, "no_letter": pred is None, "prompt_tokens": res.prompt_tokens,
            "new_tokens": res.new_tokens, "prefill_s": res.prefill_s, "decode_s": res.decode_s,
            "frames": res.media.get("frames"), "psa_calls": summary.calls if mode == "psa" else 0,
            "sparsity": summary.sparsity if mode == "psa" and ran else None,
            "density": summary.density if mode == "psa" and ran else None,
            "fallbacks": dict(fallbacks), "model": model,
            "psa_config_id": psa_config_id if mode == "psa" else None, "error": None}


# ------------------------------------------------------------------------------------------ the run
def evaluate(app: Any, items: Sequence[EvalItem], bad: Sequence[BadRecord], out_path: str | os.PathLike, *,
             modes: Sequence[str] = MODES, fps: float = 1.0, max_frames: int = 64, max_new_tokens: int = 16,
             progress: bool = True) -> dict[str, int]:
    """Run every pending (item, mode) with `app` (a `QwenVLInference`), appending records to `out_path`.

    Done (item, mode) pairs of an earlier run are skipped; errors are retried. Returns counts of new,
    skipped and failed runs.
    """
    from tqdm.auto import tqdm

    from .media import MediaError

    existing = read_results(out_path)
    cid = config_id(app.psa_config)
    check_compatible(existing, app.model_name, cid)
    last = latest(existing)
    counts = {"new": 0, "skipped": 0, "errors": 0}
    total = (len(items) + len(bad)) * len(modes)
    with open(out_path, "a", encoding="utf-8") as fh, \
            tqdm(total=total, unit="run", desc="eval", disable=not progress) as bar:
        if fh.tell() and not Path(out_path).read_bytes().endswith(b"\n"):
            fh.write("\n")            # a line cut by a crash stays alone (and ignored), never glued to a record
        def write(rec: dict[str, Any]) -> None:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            fh.flush()
            last[(rec["item_id"], rec["mode"])] = rec
            counts["errors" if rec["error"] is not None else "new"] += 1
            bar.update(1)
            bar.set_postfix_str(running_accuracy(last.values(), modes), refresh=False)

        for b in bad:
            for mode in modes:
                prev = last.get((b.item_id, mode))
                if prev is not None and prev.get("error") == b.error:
                    counts["skipped"] += 1
                    bar.update(1)
                else:
                    write(error_record(b.item_id, mode, b.error))
        for item in items:
            pending = [m for m in modes if not _done(last.get((item.item_id, m)))]
            counts["skipped"] += len(modes) - len(pending)
            bar.update(len(modes) - len(pending))
            if not pending:
                continue
            try:
                video = app.load_video(item.video_path, fps=fps, max_frames=max_frames)
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - a decoder failure is this item's error, not the run's
                why = str(e) if isinstance(e, MediaError) else _one_line(e)
                for mode in pending:
                    write(error_record(item.item_id, mode, f"video: {why}", item))
                continue
            prompt = build_prompt(item)
            for mode in pending:
                try:
                    app.use_psa = mode == "psa"
                    res = app.inference_video(video, prompt, max_new_tokens=max_new_tokens)
                    rec = result_record(item, mode, res, app.summary(), app.fallbacks(), model=app.model_name,
                                        psa_config_id=cid)
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as e:  # noqa: BLE001 - one bad item never stops the run
                    rec = error_record(item.item_id, mode, _one_line(e), item)
                write(rec)
    return counts


def _one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"


def _done(rec: dict[str, Any] | None) -> bool:
    return rec is not None and rec.get("error") is None


def running_accuracy(records: Iterable[dict[str, Any]], modes: Sequence[str]) -> str:
    """"dense=0.50 psa=0.48": accuracy so far per mode, over records without errors."""
    hits = {m: [0, 0] for m in modes}
    for r in records:
        if r.get("error") is None and r["mode"] in hits:
            hits[r["mode"]][0] += bool(r["correct"])
            hits[r["mode"]][1] += 1
    return " ".join(f"{m}={c / n:.2f}" if n else f"{m}=-" for m, (c, n) in hits.items())


# ------------------------------------------------------------------------------------------ statistics
def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval for a binomial proportion; None for n = 0."""
    if n <= 0:
        return None
    p = correct / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on b and c discordant pairs: 2 P(X <= min(b, c)), X ~ Bin(b + c, 1/2),
    capped at 1; 1.0 when there is no discordant pair."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))
    return min(1.0, 2.0 * tail / 2 ** n)


def _accuracy(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n, k = len(rows), sum(bool(r["correct"]) for r in rows)
    ci = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "ci95": list(ci) if ci else None}


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _duration_key(d: str) -> tuple[int, str]:
    return (DURATION_ORDER.index(d), d) if d in DURATION_ORDER else (len(DURATION_ORDER), d)


def summarize(records: Iterable[dict[str, Any]], modes: Sequence[str] = MODES) -> dict[str, Any]:
    """The summary of a results file (the last record per item and mode; errors are counted, not scored)."""
    last = latest(records)
    out: dict[str, Any] = {"z": Z95, "modes": {}, "paired": None}
    ok: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in modes:
        rows = [r for (_, m), r in last.items() if m == mode]
        good = [r for r in rows if r.get("error") is None]
        ok[mode] = {str(r["item_id"]): r for r in good}
        durations = sorted({str(r["duration"]) for r in good}, key=_duration_key)
        sparsity = [r["sparsity"] for r in good if r.get("sparsity") is not None]
        out["modes"][mode] = {
            "overall": _accuracy(good),
            "by_duration": {d: _accuracy([r for r in good if str(r["duration"]) == d]) for d in durations},
            "no_letter": sum(bool(r.get("no_letter")) for r in good),
            "errors": len(rows) - len(good),
            "mean_prefill_s": _mean([r["prefill_s"] for r in good]),
            "mean_sparsity": _mean(sparsity),
            "items_with_psa": len(sparsity),
        }
    if "dense" in ok and "psa" in ok:
        both = sorted(set(ok["dense"]) & set(ok["psa"]))
        d = [bool(ok["dense"][i]["correct"]) for i in both]
        p = [bool(ok["psa"][i]["correct"]) for i in both]
        b = sum(x and not y for x, y in zip(d, p))          # dense right, PSA wrong
        c = sum(y and not x for x, y in zip(d, p))          # PSA right, dense wrong
        n = len(both)
        out["paired"] = {"n": n, "dense_accuracy": sum(d) / n if n else None,
                         "psa_accuracy": sum(p) / n if n else None,
                         "difference": (sum(p) - sum(d)) / n if n else None,
                         "dense_only_correct": b, "psa_only_correct": c, "mcnemar_p": mcnemar_exact(b, c)}
    return out


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def format_summary(summary: dict[str, Any]) -> str:
    """The printed summary table."""
    head = f"{'mode':<7}{'duration':<10}{'n':>6}{'correct':>9}{'accuracy':>10}  {'95% CI (Wilson)':<17}"
    lines = [head, "-" * len(head)]
    for mode, s in summary["modes"].items():
        for dur, a in [*s["by_duration"].items(), ("overall", s["overall"])]:
            ci = f"[{a['ci95'][0]:.3f}, {a['ci95'][1]:.3f}]" if a["ci95"] else "-"
            lines.append(f"{mode:<7}{dur:<10}{a['n']:>6}{a['correct']:>9}{_fmt(a['accuracy']):>10}  {ci:<17}")
    lines.append("-" * len(head))
    for mode, s in summary["modes"].items():
        extra = f", mean sparsity {_fmt(s['mean_sparsity'])} over {s['items_with_psa']} items" \
            if mode == "psa" else ""
        lines.append(f"{mode}: mean prefill {_fmt(s['mean_prefill_s'], '.2f')} s{extra}; no letter in reply "
                     f"{s['no_letter']} (scored wrong); errors {s['errors']} (not scored)")
    p = summary["paired"]
    if p:
        lines.append(f"paired (n={p['n']}): PSA - dense = {_fmt(p['difference'], '+.3f')} "
                     f"(PSA only right {p['psa_only_correct']}, dense only right {p['dense_only_correct']}); "
                     f"exact McNemar p = {p['mcnemar_p']:.4g}")
    return "\n".join(line.rstrip() for line in lines)


__all__ = ["EvalItem", "BadRecord", "EvalDataError", "ADAPTERS", "MODES", "ANSWER_INSTRUCTION", "field_map",
           "read_records", "load_items", "build_prompt", "extract_letter", "read_results", "evaluate",
           "summarize", "format_summary", "config_id", "wilson_interval", "mcnemar_exact", "running_accuracy"]
