"""Every check the validator makes: a stable code, a severity and messages in Vietnamese and English.

Codes never change meaning once published (facilities key their HIS fixes on them); add new codes,
never reuse old ones. ``docs/errors.md`` is generated from this table (``healthbook docs errors``).

Prefixes: E = the bytes and the envelope, S = the structure of an inner document, V = one field's
value, R = rules across fields and tables, H = admission to the health book, K = the facility's signature
(chữ ký), I = ingestion (where and how the file arrived: its folder, a replay of an accepted file).

Two verdicts, not one (docs/conformance.md). Each rule says what it blocks, as data next to it:
``file`` rejects the whole file (it cannot be read or trusted), ``visit`` keeps one visit out of the health
book (it cannot be shown truthfully), ``none`` makes it a *finding*: the visit is admitted and delivered, and
the finding goes back to the facility in the receipt. Bytes that are not a safe UTF-8 XML document (size,
encoding, DTD or entities) reject the file wherever they are; an inner table that is not well-formed or not
what it should be blocks the file when the issue is about the envelope, the visit when it is XML1 (``xml1``)
and nothing when it is another table (``inner``: that table is left out). ``basis`` is where the rule comes from; ``{where}`` in it names the
table and field with the annex row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]
Blocks = Literal["file", "visit", "none"]


@dataclass(frozen=True, slots=True)
class Rule:
    code: str
    name: str
    severity: Severity
    message_vi: str
    message_en: str
    about: str
    blocks: Blocks = "none"
    basis: str = ""
    inner: Blocks | None = None  # the class when the issue is about an inner table other than XML1
    xml1: Blocks | None = None  # the class when the issue is about XML1

    def blocks_for(self, table: str | None) -> Blocks:
        if table == "XML1" and self.xml1 is not None:
            return self.xml1
        if table is not None and self.inner is not None:
            return self.inner
        return self.blocks


_RULES = [
    # --- E: bytes, XML well-formedness, envelope ---------------------------------------------------------
    Rule("E001", "FILE_EMPTY", "error", "Tệp rỗng.", "The file is empty.", "Zero bytes, or only whitespace.",
         blocks="file", basis="CV 1245 §3.4: a submission is a GIAMDINHHS XML document."),
    Rule("E002", "FILE_TOO_LARGE", "error", "Tệp quá lớn: {size} byte, giới hạn {limit} byte.",
         "File too large: {size} bytes, limit {limit} bytes.", "Checked before parsing; the limit is configurable.",
         blocks="file", basis="Hostile-input gate: the size is checked before parsing (configurable limit)."),
    Rule("E003", "NOT_UTF8", "error", "Tệp không phải UTF-8: {detail}.", "The file is not UTF-8: {detail}.",
         "Only UTF-8 is accepted (declared or detected: UTF-16 byte-order marks, other declared encodings, invalid bytes).",
         blocks="file", basis="CV 1245 §3.4: UTF-8 (<?xml … encoding=\"utf-8\"?>)."),
    Rule("E004", "DOCTYPE_FORBIDDEN", "error", "Không được phép khai báo DOCTYPE/DTD hoặc thực thể (entity).",
         "DOCTYPE, DTD and entity declarations are not allowed.",
         "Blocks XXE and entity-expansion attacks; the document is never handed to the XML parser.",
         blocks="file", basis="Hostile-input gate: no DTD, no entity (XXE, entity bombs)."),
    Rule("E005", "XML_MALFORMED", "error", "XML không hợp lệ: {detail}.", "Malformed XML: {detail}.",
         "Not well-formed (truncated, binary, unclosed tags, undefined entities...).",
         blocks="file", inner="none", xml1="visit", basis="XML 1.0 well-formedness, after the tolerances of docs/conformance.md."),
    Rule("E006", "ROOT_UNKNOWN", "error", "Phần tử gốc '{root}' không đúng, cần '{expected}'.",
         "Root element '{root}' is wrong; expected '{expected}'.",
         "The file root must be GIAMDINHHS (or a standalone check-in / XML12 document); an inner document's root must match its LOAIHOSO.",
         blocks="file", inner="none", xml1="visit", basis="CV 1245 §3.4-3.5: the envelope's and each table's root element."),
    Rule("E007", "ENVELOPE_ELEMENT_MISSING", "error", "Thiếu phần tử bắt buộc '{element}' trong hồ sơ gửi.",
         "Required envelope element '{element}' is missing.", "THONGTINDONVI/MACSKCB, THONGTINHOSO/NGAYLAP, SOLUONGHOSO, DANHSACHHOSO, LOAIHOSO, NOIDUNGFILE.",
         blocks="file", basis="CV 1245 §3.4: the envelope's elements."),
    Rule("E008", "MACSKCB_INVALID", "error", "Mã cơ sở KBCB (MACSKCB) phải gồm 5 chữ số.",
         "The facility code (MACSKCB) must be 5 digits.", "Envelope THONGTINDONVI/MACSKCB.",
         blocks="file", basis="CV 1245 §3.4: MACSKCB, the 5-digit facility code the file is signed for."),
    Rule("E009", "NGAYLAP_INVALID", "error", "NGAYLAP phải là ngày hợp lệ dạng yyyyMMdd.",
         "NGAYLAP must be a valid yyyyMMdd date.", "Envelope THONGTINHOSO/NGAYLAP.",
         blocks="file", basis="CV 1245 §3.4: NGAYLAP, yyyyMMdd."),
    Rule("E010", "SOLUONGHOSO_MISMATCH", "error", "SOLUONGHOSO khai báo {declared} nhưng có {actual} HOSO.",
         "SOLUONGHOSO says {declared} but the file holds {actual} HOSO.", "SOLUONGHOSO must equal the number of HOSO.",
         blocks="file", basis="CV 1245 §3.4: SOLUONGHOSO counts the HOSO."),
    Rule("E011", "NO_HOSO", "error", "Hồ sơ gửi không có HOSO nào.", "The submission holds no HOSO.",
         "DANHSACHHOSO must contain at least one HOSO.",
         blocks="file", basis="CV 1245 §3.4: at least one HOSO."),
    Rule("E012", "BASE64_INVALID", "error", "NOIDUNGFILE của {table} không phải base64 hợp lệ: {detail}.",
         "NOIDUNGFILE of {table} is not valid base64: {detail}.", "Strict base64 (whitespace between lines is tolerated).",
         blocks="file", inner="none", xml1="visit", basis="CV 1245 §3.4: NOIDUNGFILE holds the table, base64-encoded."),
    Rule("E013", "LOAIHOSO_UNKNOWN", "error", "LOAIHOSO '{loai}' không thuộc chuẩn {standard}.",
         "LOAIHOSO '{loai}' is not a table of standard {standard}.", "E.g. XML13 under QĐ 130, or a misspelt type.",
         blocks="none", basis="QĐ 130 / 4750 annex: the tables of the visit's standard version; the table is ignored."),
    Rule("E014", "LOAIHOSO_DUPLICATE", "error", "{table} xuất hiện nhiều lần trong một HOSO.",
         "{table} appears more than once in one HOSO.", "Each table at most once per HOSO; in particular exactly one XML1.",
         blocks="none", xml1="visit", basis="CV 1245 §3.4: each table once per HOSO; two XML1 leave the visit ambiguous."),
    Rule("E015", "XML1_MISSING", "error", "HOSO thứ {index} không có bảng XML1.", "HOSO number {index} has no XML1.",
         "Every HOSO needs exactly one XML1 (the visit summary).",
         blocks="file", basis="QĐ 130 annex: XML1, the visit summary, is the one table every HOSO carries."),
    Rule("E016", "NOIDUNGFILE_EMPTY", "error", "NOIDUNGFILE của {table} rỗng.", "NOIDUNGFILE of {table} is empty.", "",
         blocks="file", inner="none", xml1="visit", basis="CV 1245 §3.4: NOIDUNGFILE holds the table."),
    Rule("E017", "MA_LK_DUPLICATE", "error", "MA_LK '{ma_lk}' trùng với một HOSO khác trong cùng tệp.",
         "MA_LK '{ma_lk}' repeats another HOSO in the same file.", "MA_LK identifies one visit.",
         blocks="visit", basis="QĐ 130 annex XML1 MA_LK: one key, one visit; two HOSO with one key cannot both be shown."),
    Rule("E018", "INNER_TOO_LARGE", "error", "Nội dung {table} quá lớn sau giải mã: {size} byte, giới hạn {limit} byte.",
         "Decoded {table} too large: {size} bytes, limit {limit} bytes.", "Checked before decoding.",
         blocks="file", basis="Hostile-input gate: the decoded size is checked before decoding."),
    Rule("E019", "TOO_MANY_VISITS", "error",
         "Tệp có {count} hồ sơ (HOSO hoặc bản ghi), vượt giới hạn {limit} hồ sơ mỗi tệp; hãy tách thành nhiều tệp.",
         "The file holds {count} visits (HOSO, or records of a standalone document), more than the {limit} a file "
         "may hold; split it into several files.",
         "Counted once the envelope is parsed, before any visit is read; the limit is configurable.",
         blocks="file", basis="Hostile-input gate: the work per file is bounded (one receipt per file, within the "
         "function's memory and time); real HIS exports hold one HOSO per file."),
    # --- S: structure of inner documents -----------------------------------------------------------------
    Rule("S101", "ELEMENT_UNKNOWN", "warning", "Phần tử '{field}' không có trong {table} của chuẩn {standard}; bỏ qua.",
         "Element '{field}' is not part of {table} in standard {standard}; ignored.", "Reported, not rejected.",
         blocks="none", basis="QĐ 130 / 4750 annex: the table's fields ({where})."),
    Rule("S102", "ELEMENT_REPEATED", "error", "Phần tử '{field}' lặp lại trong cùng một bản ghi {table}.",
         "Element '{field}' repeats within one {table} record.", "",
         blocks="none", basis="QĐ 130 / 4750 annex: one value per field ({where})."),
    Rule("S103", "ELEMENT_NESTED", "error", "Phần tử '{field}' chứa phần tử con; chỉ được chứa văn bản.",
         "Element '{field}' contains child elements; only text is allowed.", "",
         blocks="none", basis="QĐ 130 / 4750 annex: one value per field ({where})."),
    Rule("S104", "MA_LK_MISMATCH", "error", "MA_LK của {table} ('{value}') khác MA_LK của XML1 ('{ma_lk}').",
         "MA_LK in {table} ('{value}') differs from XML1's ('{ma_lk}').", "Every table's MA_LK must equal its XML1.",
         blocks="visit", basis="Health-book need: every table shown with a visit must belong to it (MA_LK, {where})."),
    Rule("S105", "TABLE_EMPTY", "warning", "{table} không có bản ghi nào.", "{table} holds no record.",
         "A list table sent with no rows.",
         blocks="none", basis="QĐ 130 / 4750 annex: a list table holds its lines."),
    Rule("S106", "ROW_LIST_MISSING", "error", "{table} thiếu phần tử danh sách '{element}'.",
         "{table} lacks its list element '{element}'.", "",
         blocks="none", basis="CV 1245 §3.5: the table's list element; the table is ignored."),
    Rule("S107", "INLINE_TABLE", "warning",
         "NOIDUNGFILE của {table} chứa bảng dưới dạng phần tử XML, không mã hóa base64 như CV 1245 §3.4; đã đọc như vậy.",
         "NOIDUNGFILE of {table} holds the table as XML elements, not base64 as CV 1245 §3.4 asks; read as it is.",
         "Some HIS write each table inline (CDATA inside); the signature covers the envelope either way.",
         blocks="none", basis="CV 1245 §3.4: NOIDUNGFILE is the table, base64-encoded; docs/conformance.md."),
    # --- V: one field's value ----------------------------------------------------------------------------
    Rule("V201", "REQUIRED", "error", "{table}.{field} bắt buộc nhưng để trống{condition_vi}.",
         "{table}.{field} is required but empty{condition_en}.", "From the portal sheet's 'Bắt buộc' column, with its conditions.",
         blocks="none", basis="Portal sheet 'Bắt buộc' column ({where})."),
    Rule("V202", "TOO_LONG", "error", "{table}.{field} dài {length} ký tự, tối đa {max_length}.",
         "{table}.{field} is {length} characters long; at most {max_length}.", "Lengths count characters, not bytes.",
         blocks="none", basis="QĐ 130 / 4750 annex: maximum length ({where})."),
    Rule("V203", "NOT_A_NUMBER", "error", "{table}.{field} = '{value}' phải là số (dấu thập phân là dấu chấm).",
         "{table}.{field} = '{value}' must be a number ('.' as decimal point).",
         "Digits with an optional '.' and decimals and an optional leading '-'; no decimal comma, no thousands separators.",
         blocks="none", basis="QĐ 130 annex general notes: numbers with '.' as decimal point ({where})."),
    Rule("V204", "TOO_MANY_DECIMALS", "error", "{table}.{field} có quá {decimals} chữ số thập phân.",
         "{table}.{field} has more than {decimals} decimal places.", "Amounts 2, prices and quantities 3, codes and counts 0.",
         blocks="none", basis="QĐ 130 annex general notes: amounts 2 decimals, prices and quantities 3 ({where})."),
    Rule("V205", "TIMESTAMP_INVALID", "error", "{table}.{field} phải là thời điểm hợp lệ dạng yyyyMMddHHmm (12 chữ số).",
         "{table}.{field} must be a valid yyyyMMddHHmm timestamp (12 digits).", "",
         blocks="none", basis="QĐ 130 / 4750 annex: yyyyMMddHHmm ({where})."),
    Rule("V206", "DATE_INVALID", "error", "{table}.{field} phải là ngày hợp lệ dạng yyyyMMdd (8 chữ số).",
         "{table}.{field} must be a valid yyyyMMdd date (8 digits).", "For multi-valued date fields, each value.",
         blocks="none", basis="QĐ 130 / 4750 annex: yyyyMMdd ({where})."),
    Rule("V207", "BIRTH_INVALID", "error", "{table}.{field} phải dạng yyyyMMddHHmm; tháng, ngày, giờ, phút không rõ ghi 00.",
         "{table}.{field} must be yyyyMMddHHmm; unknown month, day, hour or minute written as 00.", "Annex XML1 NGAY_SINH note.",
         blocks="none", basis="QĐ 130 annex XML1 NGAY_SINH note ({where})."),
    Rule("V208", "CODE_UNKNOWN", "error", "{table}.{field} = '{value}' không thuộc danh mục {codelist} của chuẩn {standard}.",
         "{table}.{field} = '{value}' is not in code list {codelist} of standard {standard}.", "See docs/standard.md for the lists.",
         blocks="none", basis="Code list of the standard, docs/standard.md ({where})."),
    Rule("V209", "ICD10_UNKNOWN", "error", "{table}.{field}: mã ICD-10 '{value}' không tồn tại.",
         "{table}.{field}: '{value}' is not an ICD-10 code.", "WHO ICD-10 plus the Vietnamese additions in data/icd10_vn_additions.json; 'J18.9' and 'J189' both accepted.",
         blocks="none", basis="ICD-10, QĐ 4469/QĐ-BYT ({where})."),
    Rule("V210", "ICD10_NOT_SPECIFIC", "warning", "{table}.{field}: mã ICD-10 '{value}' là nhóm có mã chi tiết; nên ghi mã chi tiết.",
         "{table}.{field}: ICD-10 '{value}' is a category with subdivisions; the detailed code is expected.", "",
         blocks="none", basis="ICD-10, QĐ 4469/QĐ-BYT: the detailed code ({where})."),
    Rule("V211", "PATTERN_MISMATCH", "error", "{table}.{field} sai định dạng: {about_vi} (ví dụ {example}).",
         "{table}.{field} has the wrong format: {about_en} (e.g. {example}).", "DUONG_DUNG, MA_DOITUONG_KCB, facility codes, MA_TTDV, CAN_NANG.",
         blocks="none", basis="Portal sheet VALID column, Bộ mã DMDC ({where})."),
    Rule("V212", "PERSON_ID_INVALID", "error", "{table}.{field}: số định danh phải gồm 12 chữ số (CCCD, 3 số đầu là mã tỉnh), 9 chữ số (CMND) hoặc hộ chiếu 1 chữ in hoa + 7 chữ số.",
         "{table}.{field}: the ID must be 12 digits (citizen ID, first 3 a province code), 9 digits (old ID) or a passport of 1 capital letter + 7 digits.", "Portal sheet XML1 SO_CCCD.",
         blocks="none", basis="Portal sheet XML1 SO_CCCD ({where})."),
    Rule("V213", "INSURANCE_CARD_INVALID", "error", "{table}.{field}: mã thẻ BHYT phải gồm 15 ký tự: 2 chữ in hoa, 1 chữ số mức hưởng (1–5), 2 chữ số mã tỉnh, 10 chữ số mã BHXH; nhiều thẻ cách nhau bằng ';'.",
         "{table}.{field}: an insurance card is 15 characters: 2 capital letters, a benefit digit (1-5), a 2-digit province, a 10-digit social-insurance number; several separated by ';'.", "",
         blocks="none", basis="QĐ 130 annex MA_THE_BHYT ({where})."),
    Rule("V214", "TOO_MANY_VALUES", "error", "{table}.{field} có {count} giá trị, tối đa {max_items}.",
         "{table}.{field} holds {count} values; at most {max_items}.", "MA_BENH_KT: at most 12 secondary diagnoses.",
         blocks="none", basis="QĐ 130 annex ({where})."),
    Rule("V215", "SINGLE_VALUE_EXPECTED", "error", "{table}.{field} chỉ được ghi một mã.",
         "{table}.{field} takes exactly one code.", "MA_BENH_CHINH holds one ICD-10 code.",
         blocks="none", basis="QĐ 130 annex XML1 MA_BENH_CHINH: one code ({where})."),
    Rule("V216", "NEGATIVE_NUMBER", "error", "{table}.{field} = {value} là số âm; chuẩn không có giá trị âm ở đây.",
         "{table}.{field} = {value} is negative; the annex has no negative values here.",
         "'-0.00' is zero and passes silently; a rounding remainder such as '-0.01' is reported. The value is kept.",
         blocks="none", basis="QĐ 130 annex: amounts, prices and quantities are not negative ({where})."),
    Rule("V217", "DATE_WITHOUT_TIME", "warning",
         "{table}.{field} = {value} chỉ ghi ngày (yyyyMMdd), chuẩn yêu cầu yyyyMMddHHmm; đã đọc là ngày đó.",
         "{table}.{field} = {value} is a day (yyyyMMdd) where the annex asks yyyyMMddHHmm; read as that day.",
         "Every real re-exam paper writes NGAY_HEN_KL with 8 digits; the day is unambiguous and is shown.",
         blocks="none", basis="QĐ 130 / 4750 annex: yyyyMMddHHmm ({where}); docs/conformance.md."),
    Rule("V218", "CODE_LIST_NOT_HELD", "warning",
         "{table}.{field} = '{value}' không có trong danh mục {codelist} hệ thống đang có; danh mục theo {decision} "
         "chưa được nạp, mã được giữ nguyên.",
         "{table}.{field} = '{value}' is not among the {codelist} codes we hold; the list of {decision} is not loaded "
         "yet, so the code is kept as written.",
         "A list amended by a decision whose text is not in shared/spec (MA_LOAI_KCB from 1 August 2026): an unknown "
         "code may be a new valid one. Re-checked when the list is loaded.",
         blocks="none", basis="Dated code lists, docs/standard.md ({where}): the amending decision's list is not held."),
    Rule("V299", "MORE_OF_THE_SAME", "warning",
         "Còn {count} lỗi {same} khác ở {table}.{field} không được liệt kê (mỗi loại chỉ liệt kê {limit} lỗi đầu).",
         "{count} more {same} issues in {table}.{field} are not listed (the first {limit} of each kind are).",
         "Summarises the issues of one code, table and field beyond the first ones of a visit, so a receipt stays "
         "readable and bounded; the visit's verdict is the same, since the listed ones share their class.",
         basis="Receipts are bounded: a file within the size limit cannot make millions of issues."),
    # --- R: across fields and tables ---------------------------------------------------------------------
    Rule("R301", "FACILITY_MISMATCH", "error", "MA_CSKCB của XML1 ('{value}') khác MACSKCB của hồ sơ gửi ('{expected}').",
         "XML1 MA_CSKCB ('{value}') differs from the envelope's MACSKCB ('{expected}').", "",
         blocks="visit", basis="Health-book need: a visit is shown under its facility, and the file is signed for the envelope's MACSKCB."),
    Rule("R302", "VISIT_DATES_ORDER", "error", "{table}: cần {left} ≤ {right} ({left_value} > {right_value}).",
         "{table}: {left} must not be after {right} ({left_value} > {right_value}).", "NGAY_VAO ≤ NGAY_VAO_NOI_TRU ≤ NGAY_RA, and the same in copies.",
         blocks="none", basis="QĐ 130 / 4750 annex XML1 NGAY_VAO, NGAY_VAO_NOI_TRU, NGAY_RA."),
    Rule("R303", "ORDER_TIME_OUTSIDE_VISIT", "error", "{table}.{field} = {value} nằm ngoài đợt KBCB ({start} – {end}).",
         "{table}.{field} = {value} lies outside the visit ({start} – {end}).", "Order, execution and progress-note times must fall within NGAY_VAO..NGAY_RA.",
         blocks="none", basis="QĐ 130 annex: order and result times within the visit."),
    Rule("R304", "RESULT_BEFORE_ORDER", "error", "{table}.{field} = {value} sớm hơn {reference} = {reference_value}.",
         "{table}.{field} = {value} is earlier than {reference} = {reference_value}.", "Execution and result times come after the order (NGAY_YL).",
         blocks="none", basis="QĐ 130 annex: results after orders."),
    Rule("R305", "TREATMENT_DAYS", "error", "SO_NGAY_DTRI = {value} nhưng với MA_LOAI_KCB {visit_type} phải là {expected}.",
         "SO_NGAY_DTRI = {value} but for MA_LOAI_KCB {visit_type} it must be {expected}.", "Annex XML1 SO_NGAY_DTRI: 0 for 01/07/09; NGAY_RA − NGAY_VAO + 1 (days) for 02/03/04/06.",
         blocks="none", basis="QĐ 130 annex XML1 SO_NGAY_DTRI."),
    Rule("R306", "LINE_FORMULA", "error", "{table} dòng STT {stt}: {field} = {value}, theo công thức {formula} phải là {expected}.",
         "{table} line STT {stt}: {field} = {value}, but {formula} gives {expected}.", "Line arithmetic, rounded to the field's decimals (tolerance 0.01).",
         blocks="none", basis="QĐ 130 / 4750 annex line formulas (semantics.json, arithmetic)."),
    Rule("R307", "PAYER_SPLIT", "error", "{table} dòng STT {stt}: T_BNTT + T_BNCCT + T_BHTT + T_NGUONKHAC = {actual}, phải bằng THANH_TIEN_BV = {expected}.",
         "{table} line STT {stt}: T_BNTT + T_BNCCT + T_BHTT + T_NGUONKHAC = {actual}, must equal THANH_TIEN_BV = {expected}.", "Who pays must add up to what the line costs.",
         blocks="none", basis="QĐ 130 annex XML2 / XML3: the payer split."),
    Rule("R308", "PAYER_SHARE", "error", "{table} dòng STT {stt}: {field} = {value}, theo mức hưởng phải là {expected}.",
         "{table} line STT {stt}: {field} = {value}, but the benefit level gives {expected}.",
         "With no other source (T_NGUONKHAC = 0): T_BHTT = THANH_TIEN_BH × MUC_HUONG/100, T_BNCCT = THANH_TIEN_BH − T_BHTT, T_BNTT = THANH_TIEN_BV − THANH_TIEN_BH.",
         blocks="none", basis="QĐ 130 annex XML2 / XML3: the benefit level (MUC_HUONG)."),
    Rule("R309", "TOTAL_MISMATCH", "error", "XML1.{field} = {value} nhưng tổng {source} là {expected}.",
         "XML1.{field} = {value} but the sum of {source} is {expected}.", "XML1 totals are sums of XML2/XML3 lines (tolerance 0.01).",
         blocks="none", basis="QĐ 130 annex XML1 totals (semantics.json, arithmetic)."),
    Rule("R310", "T_BHTT_FORMULA", "error", "XML1.T_BHTT = {value}, phải bằng T_TONGCHI_BH − T_BNCCT = {expected}.",
         "XML1.T_BHTT = {value}, must equal T_TONGCHI_BH − T_BNCCT = {expected}.", "Checked when T_NGUONKHAC is 0: other sources are deducted first (annex XML2 T_NGUONKHAC a-c).",
         blocks="none", basis="QĐ 130 annex XML1 T_BHTT."),
    Rule("R311", "TABLE_REQUIRED", "error", "Thiếu {table}: bắt buộc khi {condition}.",
         "{table} is missing: required when {condition}.", "XML13 when MA_LOAI_RV is 2 or 5; XML8 when MA_LOAI_KCB is 03, 04 or 06.",
         blocks="none", basis="QĐ 130 annex XML8 and XML13 notes."),
    Rule("R312", "COPY_MISMATCH", "error", "{table}.{field} khác giá trị tương ứng ở XML1.",
         "{table}.{field} differs from the same field in XML1.", "Portal sheet: 'Nếu có dữ liệu thì phải giống thông tin này ở bảng 1'.",
         blocks="none", basis="Portal sheet: 'Nếu có dữ liệu thì phải giống thông tin này ở bảng 1' ({where})."),
    Rule("R313", "REEXAM_BEFORE_DISCHARGE", "error", "XML14.NGAY_HEN_KL = {value} sớm hơn NGAY_RA = {reference_value}.",
         "XML14.NGAY_HEN_KL = {value} is before discharge NGAY_RA = {reference_value}.", "",
         blocks="none", basis="QĐ 130 annex XML14 NGAY_HEN_KL."),
    Rule("R314", "REEXAM_AT_DISCHARGE", "warning", "XML14.NGAY_HEN_KL trùng thời điểm ra viện.",
         "XML14.NGAY_HEN_KL equals the discharge time.", "The portal accepts it; a real appointment is later.",
         blocks="none", basis="QĐ 130 annex XML14 NGAY_HEN_KL."),
    Rule("R315", "PERSON_ID_INCONSISTENT", "warning", "{table}.SO_CCCD không khớp {detail}.",
         "{table}.SO_CCCD does not match {detail}.", "Digit 4 of a 12-digit ID encodes sex and century, digits 5-6 the birth year.",
         blocks="none", basis="TT 59/2021/TT-BCA: the structure of a 12-digit citizen ID."),
    Rule("R316", "COST_GROUP_WRONG_TABLE", "error", "{table} dòng STT {stt}: MA_NHOM {value} không thuộc bảng này.",
         "{table} line STT {stt}: cost group {value} does not belong in this table.", "Drugs, blood and blood products (4, 5, 6, 7, 17) in XML2; the rest in XML3.",
         blocks="none", basis="QĐ 130 annex XML2 / XML3 MA_NHOM."),
    Rule("R317", "LINE_NUMBERING", "warning", "{table}: STT không liên tục từ 1 (gặp {value} ở vị trí {position}).",
         "{table}: STT does not count up from 1 (found {value} at position {position}).", "",
         blocks="none", basis="QĐ 130 annex: STT counts lines from 1."),
    Rule("R318", "CARD_PERIOD", "error", "Thẻ BHYT thứ {index}: GT_THE_TU {start} sau GT_THE_DEN {end}.",
         "Insurance card {index}: GT_THE_TU {start} is after GT_THE_DEN {end}.", "",
         blocks="none", basis="QĐ 130 annex XML1 GT_THE_TU, GT_THE_DEN."),
    Rule("R319", "CARD_LIST_LENGTHS", "warning", "Số giá trị của {field} ({count}) khác số thẻ BHYT ({cards}).",
         "{field} holds {count} values but there are {cards} insurance cards.", "Multi-card visits list one value per card.",
         blocks="none", basis="QĐ 130 annex XML1: one value per insurance card."),
    Rule("R320", "VISIT_DATE_UNKNOWN", "warning", "Không xác định được ngày KBCB để chọn phiên bản chuẩn; dùng {standard}.",
         "Could not read the visit date to choose the standard version; used {standard}.", "",
         blocks="none", basis="docs/standard.md: the version is chosen by the visit's date."),
]

_ADMISSION_RULES = [
    # --- H: what the health book needs to show a visit truthfully (healthbook.validation.admission) -------
    Rule("H601", "IDENTITY_UNUSABLE", "error",
         "Không đủ thông tin định danh người bệnh để đưa vào Sổ sức khỏe điện tử: {missing}.",
         "Not enough to identify the patient for the health book: {missing}.",
         "Name, birth date and sex, and a citizen ID (SO_CCCD) or an insurance card whose last 10 characters are "
         "the social-insurance number. Either number is enough: about one visit in five has no SO_CCCD.",
         blocks="visit", basis="Health-book need (QĐ 1332, administrative group): the entry must reach the right "
                               "citizen, who is found by ID number or social-insurance number with name and birth "
                               "date."),
    Rule("H602", "VISIT_FACILITY_OR_TIME", "error",
         "Lượt khám không xác định được {missing} nên không đưa vào Sổ sức khỏe điện tử.",
         "The visit cannot go into the health book without {missing}.",
         "XML1 MA_CSKCB (5 digits) and NGAY_VAO (yyyyMMddHHmm).",
         blocks="visit", basis="Health-book need (QĐ 1332, visit group): every visit is shown with its facility and "
                               "its time; the 24-hour deadline and the reports count from them."),
    Rule("H603", "MAIN_DIAGNOSIS_UNUSABLE", "error",
         "Chẩn đoán chính (MA_BENH_CHINH) {problem_vi} nên lượt khám không đưa vào Sổ sức khỏe điện tử.",
         "The main diagnosis (MA_BENH_CHINH) {problem_en}, so the visit cannot go into the health book.",
         "One ICD-10 code; a category with subdivisions is accepted (V210 is a finding).",
         blocks="visit", basis="Health-book need (QĐ 1332): the discharge diagnosis, main first, as ICD-10 "
                               "(QĐ 4469/QĐ-BYT); without it the record says nothing true about the visit."),
]
_RULES.extend(_ADMISSION_RULES)

_SIGNATURE_RULES = [
    # --- K: the facility's signature (chữ ký số) in CHUKYDONVI -------------------------------------------
    Rule("K401", "UNSIGNED", "error", "Hồ sơ chưa được ký số: không có chữ ký trong CHUKYDONVI.",
         "The submission is not signed: no signature in CHUKYDONVI.", "QĐ 2733 requires every submission to be signed.",
         blocks="file", basis="QĐ 2733 and CV 1245: every submission is signed by the facility."),
    Rule("K402", "SIGNATURE_MALFORMED", "error", "Chữ ký số không đúng cấu trúc XML-DSig: {detail}.",
         "The signature is not well-formed XML-DSig: {detail}.", "Missing SignedInfo/SignatureValue/KeyInfo, several signatures, or one outside CHUKYDONVI.",
         blocks="file", basis="W3C XML-DSig; the signature sits in CHUKYDONVI (docs/signatures.md)."),
    Rule("K403", "SIGNATURE_INVALID", "error", "Giá trị chữ ký không khớp với khóa công khai của chứng thư số.",
         "The signature value does not verify with the certificate's public key.", "",
         blocks="file", basis="W3C XML-DSig: the SignatureValue."),
    Rule("K404", "TAMPERED", "error", "Nội dung hồ sơ đã bị thay đổi sau khi ký (sai giá trị băm).",
         "The submission was changed after signing (digest mismatch).", "",
         blocks="file", basis="W3C XML-DSig: the reference digest; the file changed after signing."),
    Rule("K405", "SIGNATURE_SCOPE", "error", "Chữ ký không bao toàn bộ hồ sơ (cần Reference URI=\"\" với phép biến đổi enveloped).",
         "The signature does not cover the whole submission (Reference URI=\"\" with the enveloped transform required).", "",
         blocks="file", basis="docs/signatures.md: the signature covers the whole file."),
    Rule("K406", "WEAK_ALGORITHM", "error", "Thuật toán {algorithm} không được chấp nhận.",
         "Algorithm {algorithm} is not accepted.", "SHA-1 and MD5 are refused; RSA-SHA256/384/512, ECDSA-SHA256/384/512 and SHA-256+ digests are accepted.",
         blocks="file", basis="docs/signatures.md: accepted algorithms and key sizes."),
    Rule("K407", "CERTIFICATE_UNTRUSTED", "error", "Chứng thư số không do tổ chức chứng thực được tin cậy cấp.",
         "The certificate does not chain to a trusted certification authority.", "Trust anchors are configured (CA bundle).",
         blocks="file", basis="Trusted certification authorities (the configured CA bundle)."),
    Rule("K408", "CERTIFICATE_EXPIRED", "error", "Chứng thư số không còn hiệu lực tại thời điểm tiếp nhận ({detail}).",
         "The certificate is not valid at the time of receipt ({detail}).", "Checked at receipt time, not at signing time.",
         blocks="file", basis="The certificate's validity at the time of receipt."),
    Rule("K409", "CERTIFICATE_REVOKED", "error", "Chứng thư số đã bị thu hồi.", "The certificate has been revoked.",
         "From the registry's deny-list or a configured CRL.",
         blocks="file", basis="The registry's deny-list or the CA's CRL."),
    Rule("K410", "CERTIFICATE_UNREGISTERED", "error", "Chứng thư số chưa được đăng ký cho cơ sở nào trong danh mục chứng thư số.",
         "The certificate is not registered for any facility.", "Like the portal's \"Danh mục chứng thư số\".",
         blocks="file", basis="The facility registry (Danh mục chứng thư số)."),
    Rule("K411", "CERTIFICATE_WRONG_FACILITY", "error", "Chứng thư số được đăng ký cho cơ sở khác, không phải {facility}.",
         "The certificate is registered to another facility, not {facility}.", "A file replayed under another facility's code.",
         blocks="file", basis="The facility registry: the certificate signs for MACSKCB."),
]
_RULES.extend(_SIGNATURE_RULES)

_INGESTION_RULES = [
    # --- I: where and how the file arrived -----------------------------------------------------------------
    Rule("I501", "PREFIX_MISMATCH", "error", "Tệp được tải lên thư mục của cơ sở {prefix} nhưng MACSKCB trong hồ sơ là {facility}.",
         "The file was uploaded under facility {prefix}'s folder but its MACSKCB is {facility}.",
         "inbox/{MACSKCB}/ must match the envelope; the signing certificate must be registered for it too (K411).",
         blocks="file", basis="Facility isolation: a facility writes only inbox/<MACSKCB>/."),
    Rule("I502", "UPLOAD_LOCATION", "error", "Tệp phải nằm trong inbox/<MACSKCB>/ (nhận được: {detail}).",
         "Files belong under inbox/<MACSKCB>/ (got: {detail}).", "Anything else in the inbox bucket is refused.",
         blocks="file", basis="Facility isolation: files belong under inbox/<MACSKCB>/."),
    Rule("I503", "FILE_REPLAYED", "error",
         "Tệp trùng với một tệp đã được chấp nhận (tiếp nhận lúc {received_at}, submission_id {submission}); "
         "tệp này không được xử lý lại.",
         "This file is identical to a file already accepted at {received_at} (submission_id {submission}); "
         "it was not processed again.",
         "Byte for byte (SHA-256) the same as an ACCEPTED or PARTIAL file of the same facility, under any name or "
         "as a new version of the same key; a rejected earlier copy does not count. Names the earlier submission "
         "and its time of receipt, never its file name.",
         blocks="file", basis="Exactly one outcome per file: an accepted file is not processed twice."),
]
_RULES.extend(_INGESTION_RULES)

RULES: dict[str, Rule] = {rule.code: rule for rule in _RULES}
BY_NAME: dict[str, Rule] = {rule.name: rule for rule in _RULES}
assert len(RULES) == len(_RULES) and len(BY_NAME) == len(_RULES), "duplicate rule code or name"
