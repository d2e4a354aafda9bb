"""The CA, join tokens and the data key, as their users (managers, agents) rely on them."""

from __future__ import annotations

import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from shoal.errors import AuthError, DataKeyError
from shoal.security.ca import (
    BACKDATE,
    MANAGER_NAME,
    CertificateAuthority,
    make_csr,
    new_key,
    read_cert,
    renew_at,
)
from shoal.security.datakey import DataKey
from shoal.security.tokens import new_token, parse_token, token_matches


def test_root_is_p256_and_names_the_cluster() -> None:
    ca = CertificateAuthority.create("c0ffee")
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ca.cluster_id == "c0ffee"
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ca.digest == hashlib.sha256(der).hexdigest()
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=19 * 365)


@pytest.mark.parametrize(
    ("name", "role", "san"),
    [
        pytest.param("n1", "worker", "n1", id="worker"),
        pytest.param("manager-ab12", "manager", MANAGER_NAME, id="manager"),
        pytest.param("alice", "viewer", "alice", id="viewer"),
    ],
)
def test_issued_certificate_names_holder_role_and_cluster(name: str, role: str, san: str) -> None:
    ca = CertificateAuthority.create("c1")
    key = new_key()
    pem = ca.issue(make_csr(key, "whatever-the-csr-says"), name, role, timedelta(days=90))
    cert = x509.load_pem_x509_certificate(pem)
    info = read_cert(pem)
    assert (info.common_name, info.role, info.cluster_id) == (name, role, "c1")
    assert cert.public_key() == key.public_key()  # the holder's own key
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [san]
    assert abs(info.lifetime - timedelta(days=90)) < timedelta(seconds=2)
    cert.verify_directly_issued_by(ca.cert)


def test_a_tampered_csr_is_refused() -> None:
    ca = CertificateAuthority.create("c1")
    with pytest.raises(ValueError, match="csr"):
        ca.issue(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END", "n1", "worker")
    with pytest.raises(ValueError, match="role"):
        ca.issue(make_csr(new_key(), "n1"), "n1", "root")


def test_renewal_falls_between_half_and_four_fifths_of_the_lifetime() -> None:
    ca = CertificateAuthority.create("c1")
    cert, _ = ca.issue_pair("n1", "worker", timedelta(seconds=30))
    info = read_cert(cert)
    issued = info.not_before + BACKDATE
    times = [renew_at(info) for _ in range(200)]
    assert all(issued + timedelta(seconds=15) <= t <= issued + timedelta(seconds=24) for t in times)
    assert len(set(times)) > 50  # random, so a fleet does not renew in lockstep
    assert renew_at(info, 0.5) == issued + timedelta(seconds=15)


def test_ca_survives_a_round_trip_through_its_sealed_key(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("c1")
    key = DataKey.load_or_create(tmp_path / "datakey")
    blob = key.seal(ca.key_pem, b"ca-key")
    assert ca.key_pem not in blob
    again = DataKey.load(tmp_path / "datakey")
    from shoal.security.ca import load_key

    restored = CertificateAuthority(ca.cert_pem, load_key(again.open(blob, b"ca-key")))
    assert restored.digest == ca.digest


def test_data_key_file_is_private_and_refuses_other_keys_and_contexts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "datakey"
    key = DataKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert DataKey.load_or_create(path).key_id == key.key_id  # loaded, not replaced
    blob = key.seal(b"secret bytes", b"secret/db")
    with pytest.raises(DataKeyError, match="not the key"):
        DataKey.generate().open(blob, b"secret/db")
    with pytest.raises(DataKeyError):
        key.open(blob, b"secret/other")  # sealed for another purpose
    (tmp_path / "bad").write_text("not hex")
    with pytest.raises(DataKeyError, match="not a shoal data key"):
        DataKey.load(tmp_path / "bad")


def test_tokens_pin_the_ca_and_compare_whole() -> None:
    ca = CertificateAuthority.create("c1")
    token = new_token(ca.digest)
    text = str(token)
    assert text.startswith(f"SHOAL-1-{ca.digest}-")
    assert parse_token(text) == token
    assert token_matches(text + "\n", text)
    assert not token_matches(str(new_token(ca.digest)), text)
    with pytest.raises(AuthError, match="not a shoal join token"):
        parse_token("SWMTKN-1-abc")
    with pytest.raises(AuthError, match="malformed"):
        parse_token("SHOAL-1-abc-def")


def test_certificate_validity_is_counted_from_issue_not_backdate() -> None:
    ca = CertificateAuthority.create("c1")
    cert, _ = ca.issue_pair("n1", "worker", timedelta(hours=1))
    info = read_cert(cert)
    now = datetime.now(UTC)
    assert info.not_before < now - BACKDATE + timedelta(seconds=2)
    assert abs(info.issued_at - now) < timedelta(seconds=2)
