"""Admission to the health book: the short list of what makes a visit unusable or untrustworthy (H6xx).

Everything else the validator finds is a finding: the visit is admitted and delivered, and the finding goes
back to the facility (docs/conformance.md). Each entry is justified by what the health book needs:

- H601 identity: the entry must reach the right citizen. Name, birth date, sex, and a number the population
  database answers to: the citizen ID (SO_CCCD) or the social-insurance number, the last 10 characters of the
  insurance card (MA_THE_BHYT), which is the number citizens link in VNeID. About one visit in five has no
  SO_CCCD (children, special groups), so either number is enough.
- H602 facility and admission time: every entry is shown with them; the deadline and reports count from them.
- H603 main diagnosis: the discharge diagnosis, main first, as ICD-10; without it the entry says nothing
  true about the visit.

A field counts as usable when its own field rule accepted it (it has a typed value; a plain string is usable
when present), so a bad value is explained once, by its V finding, and here only named.
"""

from __future__ import annotations

from healthbook.standard import Standard
from healthbook.standard.cards import social_insurance_numbers
from healthbook.validation.cross import TableRows
from healthbook.validation.fields import plan
from healthbook.validation.issues import Issue, make_issue

SUMMARY = "XML1"
IDENTITY = ("HO_TEN", "NGAY_SINH", "GIOI_TINH")
ID_NUMBER, CARD = "SO_CCCD", "MA_THE_BHYT"
VISIT = ("MA_CSKCB", "NGAY_VAO")
MAIN_DIAGNOSIS = "MA_BENH_CHINH"
def admit(standard: Standard, tables: dict[str, TableRows], ma_lk: str, issues: list[Issue]) -> None:
    """Add the H issues that keep this visit out of the health book. Nothing when XML1 could not be read:
    that E issue blocks the visit already."""
    summary = tables.get(SUMMARY)
    if summary is None or not summary.raw:
        return
    raw, typed = summary.raw[0], summary.typed[0]
    plans = plan(standard, SUMMARY)

    def usable(name: str) -> bool:
        """Accepted by its field rule: a typed value, or present for a plain string (only its length checked)."""
        return name in typed or (name in raw and isinstance(plans.get(name), int))

    missing = [name for name in IDENTITY if not usable(name)]
    if not usable(ID_NUMBER) and not social_insurance_numbers(raw.get(CARD, "")):
        missing.append(f"{ID_NUMBER} / {CARD}")
    if missing:
        issues.append(make_issue("H601", table=SUMMARY, ma_lk=ma_lk, missing=", ".join(missing)))
    missing = [name for name in VISIT if not usable(name)]
    if missing:
        issues.append(make_issue("H602", table=SUMMARY, ma_lk=ma_lk, missing=", ".join(missing)))
    if MAIN_DIAGNOSIS not in raw:
        issues.append(make_issue("H603", table=SUMMARY, ma_lk=ma_lk, field=MAIN_DIAGNOSIS,
                                 problem_vi="để trống", problem_en="is empty"))
    elif MAIN_DIAGNOSIS not in typed:
        issues.append(make_issue("H603", table=SUMMARY, ma_lk=ma_lk, field=MAIN_DIAGNOSIS, value=raw[MAIN_DIAGNOSIS],
                                 problem_vi="không phải một mã ICD-10 hợp lệ",
                                 problem_en="is not one valid ICD-10 code"))
