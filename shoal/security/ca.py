"""The cluster CA: the root every shoal identity chains to.

The first manager of a cluster creates an ECDSA P-256 root (20 years); every
node and user certificate is issued by it:

    node    CN = node id,   OU = manager | worker,  O = cluster id
    user    CN = user name, OU = admin | viewer,    O = cluster id

Every certificate carries the SAN ``shoal-manager`` when its OU is ``manager``
(clients verify the server they dial by that name, not by IP, so a manager may be
reached at any address), and the holder's name otherwise. The holder makes its
own key and sends a CSR: private keys never cross the network. Certificates are
backdated by ``BACKDATE`` so that small clock differences between machines do not
make a fresh certificate "not yet valid".

The root's own certificate also serves the join listener (``shoal.security.join``):
a joiner that has only the CA digest from its token fetches that certificate,
checks its digest, and from then on trusts exactly it.

The CA key is kept sealed with the data key (``shoal.security.datakey``) wherever
it is stored; ``CertificateAuthority`` holds it in memory only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROLE_MANAGER = "manager"
ROLE_WORKER = "worker"
ROLE_ADMIN = "admin"
ROLE_VIEWER = "viewer"
NODE_ROLES = frozenset({ROLE_MANAGER, ROLE_WORKER})
USER_ROLES = frozenset({ROLE_ADMIN, ROLE_VIEWER})

# The name clients verify managers by, and the join listener's name.
MANAGER_NAME = "shoal-manager"
CA_NAME = "shoal-ca"
ROOT_VALIDITY = timedelta(days=20 * 365)
DEFAULT_VALIDITY = timedelta(days=90)
MIN_VALIDITY = timedelta(seconds=10)
BACKDATE = timedelta(minutes=5)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("not an ECDSA private key")
    return key


def make_csr(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A CSR for ``key``; the CA decides the subject, the CSR proves the key."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def digest_of(cert_pem: bytes) -> str:
    """The SHA-256 of a certificate's DER, in hex: what join tokens pin."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What a certificate says about its holder."""

    common_name: str
    role: str
    cluster_id: str
    serial: int
    not_before: datetime
    not_after: datetime

    @property
    def kind(self) -> str:
        return "node" if self.role in NODE_ROLES else "user"

    @property
    def issued_at(self) -> datetime:
        """When it was issued (``not_before`` is backdated by ``BACKDATE``)."""
        return self.not_before + BACKDATE

    @property
    def lifetime(self) -> timedelta:
        return self.not_after - self.issued_at


def _one(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def cert_info(cert: x509.Certificate) -> CertInfo:
    subject = cert.subject
    return CertInfo(
        common_name=_one(subject, NameOID.COMMON_NAME),
        role=_one(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        cluster_id=_one(subject, NameOID.ORGANIZATION_NAME),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


def read_cert(pem: bytes) -> CertInfo:
    return cert_info(x509.load_pem_x509_certificate(pem))


class CertificateAuthority:
    """Issues the cluster's certificates; see the module docstring."""

    def __init__(self, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = x509.load_pem_x509_certificate(cert_pem)
        if self.cert.public_key() != key.public_key():
            raise ValueError("the CA key does not belong to the CA certificate")
        self.cert_pem = cert_pem
        self.key = key
        self.cluster_id = _one(self.cert.subject, NameOID.ORGANIZATION_NAME)
        self.digest = digest_of(cert_pem)

    @classmethod
    def create(cls, cluster_id: str) -> CertificateAuthority:
        key = new_key()
        now = datetime.now(UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, cluster_id),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,  # it also serves the join listener's TLS
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(CA_NAME)]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(cert.public_bytes(serialization.Encoding.PEM), key)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self.key)

    def issue(
        self,
        csr_pem: bytes,
        common_name: str,
        role: str,
        validity: timedelta = DEFAULT_VALIDITY,
    ) -> bytes:
        """A certificate for the key in ``csr_pem``, naming ``common_name`` and ``role``."""
        if role not in NODE_ROLES | USER_ROLES:
            raise ValueError(f"role: unknown role {role!r}")
        if not common_name or len(common_name) > 64:
            raise ValueError("name: must be 1 to 64 characters")
        validity = max(validity, MIN_VALIDITY)
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise ValueError(f"csr: not a PEM certificate signing request ({exc})") from exc
        if not csr.is_signature_valid:
            raise ValueError("csr: its signature does not match its key")
        public_key = csr.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ValueError("csr: the key must be ECDSA")
        now = datetime.now(UTC)
        san = MANAGER_NAME if role == ROLE_MANAGER else common_name
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if role == ROLE_MANAGER:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.cluster_id),
                    ]
                )
            )
            .issuer_name(self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM)

    def issue_pair(
        self, common_name: str, role: str, validity: timedelta = DEFAULT_VALIDITY
    ) -> tuple[bytes, bytes]:
        """A new key and its certificate (for holders the CA creates itself: the manager,
        the local agent of ``shoal up``, a user bundle)."""
        key = new_key()
        return self.issue(make_csr(key, common_name), common_name, role, validity), key_pem(key)


def renew_at(info: CertInfo, fraction: float | None = None) -> datetime:
    """When the holder should renew: at a random 50-80 % of the certificate's lifetime."""
    if fraction is None:
        fraction = 0.5 + secrets.randbelow(30_001) / 100_000
    return info.issued_at + info.lifetime * fraction
