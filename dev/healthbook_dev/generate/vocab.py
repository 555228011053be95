"""Vocabulary for realistic, fictitious submissions: people, places, facilities, diagnoses, drugs, services.

Codes are shaped like the real catalogues (DMDC service codes, drug ingredient codes, route codes) but
the facilities and people are invented.
"""

from __future__ import annotations

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ", "Hồ",
            "Ngô", "Dương", "Lý", "Đinh", "Trịnh", "Mai", "Cao"]
MIDDLE_MALE = ["Văn", "Hữu", "Đức", "Minh", "Quang", "Thành", "Công", "Xuân", "Đình", "Trọng"]
MIDDLE_FEMALE = ["Thị", "Ngọc", "Thu", "Thanh", "Hồng", "Mỹ", "Kim", "Diệu", "Phương", "Bảo"]
GIVEN_MALE = ["An", "Bình", "Cường", "Dũng", "Hải", "Hiếu", "Hùng", "Khánh", "Long", "Minh", "Nam", "Phong",
              "Quân", "Sơn", "Tâm", "Thắng", "Trung", "Tuấn", "Việt", "Vinh"]
GIVEN_FEMALE = ["Anh", "Châu", "Giang", "Hà", "Hạnh", "Hoa", "Hương", "Lan", "Linh", "Mai", "Nga", "Ngân",
                "Nhung", "Phương", "Quỳnh", "Thảo", "Trang", "Vân", "Xuân", "Yến"]

# (province code, province, [(district code, district, [(commune code, commune)])])
PLACES = [
    ("01", "Thành phố Hà Nội", [("001", "Quận Ba Đình", [("00001", "Phường Phúc Xá"), ("00004", "Phường Trúc Bạch")]),
                                ("005", "Quận Cầu Giấy", [("00157", "Phường Nghĩa Đô"), ("00160", "Phường Dịch Vọng")])]),
    ("79", "Thành phố Hồ Chí Minh", [("760", "Quận 1", [("26734", "Phường Tân Định"), ("26737", "Phường Đa Kao")]),
                                     ("769", "Thành phố Thủ Đức", [("26800", "Phường Linh Xuân")])]),
    ("48", "Thành phố Đà Nẵng", [("492", "Quận Hải Châu", [("20194", "Phường Thạch Thang"), ("20197", "Phường Hải Châu I")])]),
    ("31", "Thành phố Hải Phòng", [("303", "Quận Hồng Bàng", [("11296", "Phường Quán Toan")])]),
    ("92", "Thành phố Cần Thơ", [("916", "Quận Ninh Kiều", [("31117", "Phường Cái Khế")])]),
    ("40", "Tỉnh Nghệ An", [("412", "Thành phố Vinh", [("16681", "Phường Đông Vĩnh")])]),
    ("38", "Tỉnh Thanh Hóa", [("380", "Thành phố Thanh Hóa", [("14755", "Phường Hàm Rồng")])]),
    ("46", "Tỉnh Thừa Thiên Huế", [("474", "Thành phố Huế", [("19747", "Phường Phú Hội")])]),
]
STREETS = ["Lê Lợi", "Trần Hưng Đạo", "Nguyễn Trãi", "Hai Bà Trưng", "Lý Thường Kiệt", "Phan Chu Trinh",
           "Điện Biên Phủ", "Hùng Vương", "Quang Trung", "Lê Duẩn"]

# (code, name, province code)
FACILITIES = [
    ("01001", "Bệnh viện Đa khoa Thành phố Hà Nội", "01"), ("01002", "Bệnh viện Hữu nghị Ba Đình", "01"),
    ("79001", "Bệnh viện Đa khoa Sài Gòn", "79"), ("79002", "Bệnh viện Quận 1", "79"),
    ("48001", "Bệnh viện Đa khoa Đà Nẵng", "48"), ("40001", "Bệnh viện Hữu nghị Đa khoa Nghệ An", "40"),
    ("92001", "Bệnh viện Đa khoa Cần Thơ", "92"), ("31001", "Bệnh viện Hồng Bàng", "31"),
]
CARD_GROUPS = [("DN", 4), ("HC", 4), ("GD", 4), ("HS", 4), ("TE", 1), ("HN", 2), ("CN", 3), ("BT", 2), ("HT", 3)]
BENEFIT_LEVEL = {1: 100, 2: 100, 3: 95, 4: 80, 5: 100}
DEPARTMENTS = [("K01", "Khoa Khám bệnh"), ("K02", "Khoa Hồi sức cấp cứu"), ("K03", "Khoa Nội tổng hợp"),
               ("K19", "Khoa Ngoại tổng hợp"), ("K26", "Khoa Phụ sản"), ("K48", "Khoa Nhi")]

# (ICD-10, Vietnamese name, outpatient?, inpatient?)
DIAGNOSES = [
    ("J06.9", "Nhiễm trùng đường hô hấp trên cấp, không đặc hiệu", True, False),
    ("I10", "Tăng huyết áp vô căn (nguyên phát)", True, False),
    ("E11.9", "Bệnh đái tháo đường không phụ thuộc insulin, không có biến chứng", True, False),
    ("K29.7", "Viêm dạ dày, không đặc hiệu", True, False),
    ("M54.5", "Đau lưng vùng thấp", True, False),
    ("J20.9", "Viêm phế quản cấp, không đặc hiệu", True, False),
    ("H10.9", "Viêm kết mạc, không đặc hiệu", True, False),
    ("E78.5", "Tăng lipid máu, không đặc hiệu", True, False),
    ("J18.9", "Viêm phổi, không đặc hiệu", False, True),
    ("K35.8", "Viêm ruột thừa cấp, khác và không đặc hiệu", False, True),
    ("I50.0", "Suy tim sung huyết", False, True),
    ("N39.0", "Nhiễm khuẩn hệ tiết niệu, vị trí không xác định", False, True),
    ("K80.2", "Sỏi túi mật không có viêm túi mật", False, True),
    ("I63.9", "Nhồi máu não, không đặc hiệu", False, True),
    ("S72.0", "Gãy cổ xương đùi", False, True),
]
SECONDARY = ["I10", "E11.9", "E78.5", "K21.9", "J44.9", "N18.9", "D64.9", "R50.9"]
TB_DIAGNOSES = [("A15.0", "Lao phổi, có xác nhận bằng soi đờm có hoặc không có nuôi cấy"),
                ("A16.2", "Lao phổi, không có xác nhận vi khuẩn học hoặc mô học")]

# (MA_THUOC, TEN_THUOC, HAM_LUONG, DUONG_DUNG, DANG_BAO_CHE, DON_VI_TINH, unit price, SO_DANG_KY, MA_NHOM)
DRUGS = [
    ("40.17", "Paracetamol 500mg", "500mg", "1.01", "Viên nén", "Viên", "450", "VD-21015-14", "4"),
    ("40.51", "Amoxicillin 500mg", "500mg", "1.01", "Viên nang", "Viên", "1200", "VD-25123-16", "4"),
    ("40.456", "Omeprazol 20mg", "20mg", "1.01", "Viên nang", "Viên", "780", "VD-30021-18", "4"),
    ("40.382", "Amlodipin 5mg", "5mg", "1.01", "Viên nén", "Viên", "350", "VD-28756-18", "4"),
    ("40.571", "Metformin 850mg", "850mg", "1.01", "Viên nén bao phim", "Viên", "640", "VD-27311-17", "4"),
    ("40.93", "Ceftriaxon 1g", "1g", "2.10", "Bột pha tiêm", "Lọ", "18500", "VD-24891-16", "4"),
    ("40.1027", "Natri clorid 0,9% 500ml", "0,9%", "2.15", "Dung dịch tiêm truyền", "Chai", "9870", "VD-22305-15", "4"),
    ("40.677", "Atorvastatin 20mg", "20mg", "1.01", "Viên nén bao phim", "Viên", "990", "VD-31888-19", "4"),
    ("40.232", "Salbutamol 2,5mg/2,5ml", "2,5mg", "3.05", "Dung dịch khí dung", "Ống", "4620", "VN-19856-16", "4"),
    ("40.318", "Ringer lactat 500ml", "500ml", "2.15", "Dung dịch tiêm truyền", "Chai", "11550", "VD-26003-16", "4"),
    ("40.741", "Piperacillin + Tazobactam 4,5g", "4g + 0,5g", "2.10", "Bột pha tiêm", "Lọ", "96000", "VN-20345-17", "6"),
]
TB_DRUGS = [("40.213", "Rifampicin + Isoniazid 150mg/75mg", "150mg + 75mg", "1.01", "Viên nén", "Viên", "1850", "VD-18450-13", "4")]

# (MA_DICH_VU, TEN_DICH_VU, MA_NHOM, unit price, DON_VI_TINH)
EXAM = ("02.1896", "Khám Nội", "13", "38700", "Lần")
LABS = [  # with (indicator code, indicator, unit, low, high) results for XML4
    ("22.0120.1370", "Tổng phân tích tế bào máu ngoại vi (bằng máy đếm laser)", "1", "46200", "Lần",
     [("WBC", "Số lượng bạch cầu", "G/L", 4.0, 10.0), ("RBC", "Số lượng hồng cầu", "T/L", 3.8, 5.5),
      ("HGB", "Huyết sắc tố", "g/L", 120, 170), ("PLT", "Số lượng tiểu cầu", "G/L", 150, 450)]),
    ("23.0075.1494", "Định lượng Glucose [Máu]", "1", "21500", "Lần", [("GLU", "Glucose", "mmol/L", 3.9, 6.4)]),
    ("23.0020.1493", "Định lượng Creatinin [Máu]", "1", "21500", "Lần", [("CREA", "Creatinin", "µmol/L", 62, 120)]),
    ("23.0158.1506", "Đo hoạt độ ALT (GPT)", "1", "21500", "Lần", [("ALT", "ALT", "U/L", 0, 40)]),
    ("23.0041.1487", "Định lượng Cholesterol toàn phần", "1", "26900", "Lần", [("CHOL", "Cholesterol", "mmol/L", 3.9, 5.2)]),
]
IMAGING = [("18.0119.0028", "Chụp Xquang ngực thẳng", "2", "65400", "Lần", "Phổi hai bên không thấy tổn thương khu trú."),
           ("18.0001.0001", "Siêu âm ổ bụng (gan mật, tụy, lách, thận, bàng quang)", "2", "43900", "Lần", "Gan, mật, tụy, lách, thận không thấy bất thường.")]
FUNCTIONAL = [("21.0014.1778", "Điện tim thường", "3", "32800", "Lần", "Nhịp xoang đều, tần số 78 chu kỳ/phút.")]
PROCEDURES = [("03.3911.0211", "Thay băng vết thương chiều dài dưới 15cm", "8", "57600", "Lần"),
              ("10.0466.0562", "Phẫu thuật nội soi cắt ruột thừa", "8", "2810000", "Lần")]
BED_DAY = ("K03.1903", "Ngày giường bệnh Nội khoa loại 3 - Hạng II", "15", "171100", "Ngày")
# (MA_VAT_TU, TEN_VAT_TU, unit price, DON_VI_TINH)
SUPPLIES = [("N03.05.020", "Bơm tiêm nhựa 5ml", "900", "Cái"), ("N04.01.010", "Kim luồn tĩnh mạch 22G", "7500", "Cái"),
            ("N02.03.040", "Bông y tế thấm nước", "3200", "Gói")]

# A delivery (scenario "birth"): the mother's stay in the maternity ward and the birth certificate (XML9).
MATERNITY = "K26"
DELIVERY_DIAGNOSIS = ("O80.0", "Đẻ thường ngôi chỏm")
LIVE_BIRTH = "Z37.0"
DELIVERY = ("13.0100.0634", "Đỡ đẻ thường ngôi chỏm", "8", "706000", "Lần")

# Since 1 July 2025 (two-level local government) an address is a province and a commune, no district.
# (province code, province, its abbreviation in practising-certificate numbers, [(commune code, commune)]).
# Province codes are the surviving ones seen in 2026 exports; commune codes are shaped like the 2025 list (5 digits),
# not taken from it.
PROVINCES_2025 = [
    ("92", "Thành phố Cần Thơ", "CT", [("31117", "Phường Ninh Kiều"), ("31120", "Phường Cái Khế"), ("31153", "Phường Tân An"),
                                       ("31186", "Phường Bình Thủy"), ("31213", "Phường Cái Răng"), ("31299", "Xã Phong Điền"),
                                       ("31471", "Phường Sóc Trăng"), ("31342", "Phường Vị Thanh")]),
    ("96", "Tỉnh Cà Mau", "CM", [("32002", "Phường An Xuyên"), ("32014", "Phường Bạc Liêu"), ("32131", "Xã Thới Bình")]),
    ("79", "Thành phố Hồ Chí Minh", "HCM", [("26734", "Phường Tân Định"), ("26740", "Phường Sài Gòn"), ("27043", "Phường Bình Thạnh")]),
    ("86", "Tỉnh Vĩnh Long", "VL", [("29590", "Phường Long Châu"), ("28756", "Phường Bến Tre"), ("29239", "Phường Trà Vinh")]),
    ("91", "Tỉnh An Giang", "AG", [("30280", "Phường Long Xuyên"), ("30742", "Phường Rạch Giá"), ("30337", "Phường Châu Đốc")]),
    ("80", "Tỉnh Tây Ninh", "TN", [("27694", "Phường Long An"), ("25459", "Phường Tân Ninh")]),
    ("52", "Tỉnh Gia Lai", "GL", [("21550", "Phường Quy Nhơn"), ("23575", "Phường Pleiku")]),
]
