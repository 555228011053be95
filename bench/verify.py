"""Signature verification speed, as ratios against the validator benchmark's parse floor, in the same run.

(a) floor: lxml parse of the envelope, base64 decode, parse and walk of every inner document
    (the same function as bench/validate.py);
(v) XML-DSig verification alone (certificate chain, registry, digest and signature);
(w) validation + verification;
(p) the pipeline as the ingest function runs it (signature first, validation, receipt signed with a local key);
(f) the pipeline over the same files forged after signing (K404): refused before its visits are read, so a
    forger's file costs a fraction of a good one (p/f).
The runs take turns (interleaved rounds) and each figure is its best round, as timeit advises.

Usage: python bench/verify.py [--files 200] [--rows 70] [--rounds 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from healthbook.pipeline import process_submission
from healthbook.signing.signer import LocalKeySigner
from healthbook.signing.xml_signer import sign_submission
from healthbook.signing.xmldsig import Trust, verify_submission
from healthbook.validation import validate_bytes
from healthbook_dev.generate import build_visit, submission
from healthbook_dev.pki import dev_pki


def _floor_from_validate_bench():  # type: ignore[no-untyped-def]
    """Reuse the exact floor of bench/validate.py so both benchmarks divide by the same thing."""
    spec = importlib.util.spec_from_file_location("bench_validate", Path(__file__).with_name("validate.py"))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--rows", type=int, default=70)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    floor = _floor_from_validate_bench()

    with tempfile.TemporaryDirectory() as tmp:
        pki = dev_pki(Path(tmp))
        trust = Trust.from_files(pki["ca"], registry=pki["registry"])
        key = serialization.load_pem_private_key(pki["01001-key"].read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(pki["01001"].read_bytes())
    rng = random.Random(7)
    facility = ("01001", "Bệnh viện Đa khoa Thành phố Hà Nội", "01")
    files = [sign_submission(submission(build_visit(rng, scenario="outpatient", detail_rows=args.rows,
                                                    facility=facility)), key, cert)  # type: ignore[arg-type]
             for _ in range(args.files)]
    at = datetime.now(UTC)
    check = verify_submission(files[0], trust=trust, facility="01001", at=at)
    assert check.valid, [i.code for i in check.issues]

    def verify(data: bytes) -> object:
        return verify_submission(data, trust=trust, facility="01001", at=at)

    def both(data: bytes) -> object:
        return validate_bytes(data), verify(data)

    platform = LocalKeySigner.from_pem(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    # The same files with one digit of NGAYLAP changed after signing (K404): what a forger sends.
    forged = [data.replace(b"<NGAYLAP>2", b"<NGAYLAP>1", 1) for data in files]
    assert all(f != d for f, d in zip(forged, files, strict=True))

    def ingest(data: bytes) -> object:  # what the ingest function runs: signature first, then validation
        return process_submission(data, object_key="inbox/01001/x.xml", received_at=at, signer=platform,
                                  trust=trust)

    done = ingest(forged[0])
    assert [i.code for i in done.result.errors] == ["K404"], [i.code for i in done.result.errors]  # type: ignore[attr-defined]

    best = {"a": 0.0, "v": 0.0, "w": 0.0, "p": 0.0, "f": 0.0}
    for _ in range(args.rounds):
        for name, fn, batch in (("a", floor, files), ("v", verify, files), ("w", both, files),
                                ("p", ingest, files), ("f", ingest, forged)):
            started = time.perf_counter()
            for data in batch:
                fn(data)
            best[name] = max(best[name], len(batch) / (time.perf_counter() - started))
    size = sum(len(f) for f in files) / len(files)
    print(f"{args.files} signed one-visit files, {args.rows} detail rows each, mean {size / 1024:.0f} KiB")
    a, v, w = best["a"], best["v"], best["w"]
    print(f"(a) parse floor (bench/validate.py)            {a:8.0f} files/s")
    print(f"(v) signature verification alone              {v:8.0f} files/s   v/a = {v / a:.2f}")
    print(f"(w) validation + signature verification        {w:8.0f} files/s   w/a = {w / a:.2f}")
    p, f = best["p"], best["f"]
    print(f"(p) the pipeline (+ receipt, signed locally)    {p:8.0f} files/s   p/a = {p / a:.2f}")
    print(f"(f) the pipeline, the same files forged (K404)  {f:8.0f} files/s   f/a = {f / a:.2f}: a forged file "
          f"costs {p / f:.2f} of a good one (refused before its visits are read)")


if __name__ == "__main__":
    main()
