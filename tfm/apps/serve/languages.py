"""LibreTranslate's language codes (ISO 639-1: "en", "fr"; "zt" for traditional Chinese) as a multilingual model names
them: M2M100 uses them as they are, mBART adds a region ("en_XX"), NLLB-200 names a language and its script
("eng_Latn"). A request may also give the model's own code."""
from __future__ import annotations

# LibreTranslate's languages -> NLLB-200's codes (FLORES-200: ISO 639-3 and the script)
NLLB = {"en": "eng_Latn", "ar": "arb_Arab", "az": "azj_Latn", "bg": "bul_Cyrl", "bn": "ben_Beng", "ca": "cat_Latn", "cs": "ces_Latn",
        "da": "dan_Latn", "de": "deu_Latn", "el": "ell_Grek", "eo": "epo_Latn", "es": "spa_Latn", "et": "est_Latn", "fa": "pes_Arab",
        "fi": "fin_Latn", "fr": "fra_Latn", "ga": "gle_Latn", "he": "heb_Hebr", "hi": "hin_Deva", "hu": "hun_Latn", "id": "ind_Latn",
        "it": "ita_Latn", "ja": "jpn_Jpan", "ko": "kor_Hang", "lt": "lit_Latn", "lv": "lvs_Latn", "ms": "zsm_Latn", "nb": "nob_Latn",
        "nl": "nld_Latn", "pl": "pol_Latn", "pt": "por_Latn", "ro": "ron_Latn", "ru": "rus_Cyrl", "sk": "slk_Latn", "sl": "slv_Latn",
        "sq": "als_Latn", "sv": "swe_Latn", "th": "tha_Thai", "tl": "tgl_Latn", "tr": "tur_Latn", "uk": "ukr_Cyrl", "ur": "urd_Arab",
        "vi": "vie_Latn", "zh": "zho_Hans", "zt": "zho_Hant"}


def model_code(code: str, languages: tuple[str, ...], field: str) -> str:
  """A request's language code as the model names it: its own code, or a LibreTranslate code mapped to one (NLLB's
  table, mBART's region suffix); a LookupError naming the field and the model's codes otherwise."""
  if code in languages: return code
  candidates = {NLLB.get(code)} & set(languages) or {c for c in languages if c.split("_")[0] == code}
  if len(candidates) == 1: return candidates.pop()
  why = f"is ambiguous here ({', '.join(sorted(candidates))})" if candidates else "is not a language of this model"
  raise LookupError(f"{field} {code!r} {why}; give one of the model's codes: {', '.join(languages)}")
