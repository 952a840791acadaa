"""TLS and mutual TLS on a real server: the caller named by its client certificate, plaintext refused by TLS."""

import datetime

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gallery.v1 import gallery_pb2 as pb
from gallery.v1 import gallery_pb2_grpc

from cluster.serve.audit import AuditLog, read_audit
from cluster.serve.cli import _tls_credentials
from cluster.serve.interceptors import TrustInterceptor
from cluster.serve.server import running_server
from cluster.serve.tokens import TokenRegistry


def _certificate(common_name: str, issuer_key=None, issuer_name=None, *, ca: bool = False):
    """(PEM certificate, PEM key, key, name): self-signed, or signed by the issuer given."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    certificate = builder.sign(issuer_key or key, hashes.SHA256())
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), pem_key, key, name


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca_pem, _, ca_key, ca_name = _certificate("gallery test CA", ca=True)
    server_pem, server_key, _, _ = _certificate("localhost", ca_key, ca_name)
    client_pem, client_key, _, _ = _certificate("door-3-reader", ca_key, ca_name)
    paths = {}
    for name, data in {"ca.crt": ca_pem, "server.crt": server_pem, "server.key": server_key}.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths, ca_pem, client_pem, client_key


def _served(gallery, credentials):
    registry = TokenRegistry(gallery.store)
    audit = AuditLog(gallery.store)
    return running_server(gallery, "localhost:0", interceptors=[TrustInterceptor(audit, registry,
                                                                                 certificate_role="searcher")],
                          credentials=credentials), audit, registry


def test_mutual_tls_names_the_caller_by_its_certificate(gallery, pki):
    paths, ca_pem, client_pem, client_key = pki
    credentials = _tls_credentials("localhost", str(paths["server.crt"]), str(paths["server.key"]),
                                   str(paths["ca.crt"]), "searcher", insecure=False)
    server, audit, registry = _served(gallery, credentials)
    admin = registry.create("admin", "admin")
    with server as (_, port):
        mutual = grpc.ssl_channel_credentials(ca_pem, private_key=client_key, certificate_chain=client_pem)
        with grpc.secure_channel(f"localhost:{port}", mutual) as channel:
            stub = gallery_pb2_grpc.GalleryStub(channel)
            stub.CreateCollection(pb.CreateCollectionRequest(collection_id="c", dimension=4),
                                  metadata=[("authorization", f"Bearer {admin}")])
            listed = stub.ListCollections(pb.ListCollectionsRequest())  # no token: the certificate says who
            assert [c.collection_id for c in listed.collections] == ["c"]
            with pytest.raises(grpc.RpcError) as denied:  # a searcher by certificate cannot delete
                stub.DeleteCollection(pb.DeleteCollectionRequest(collection_id="c"))
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # Without a client certificate the handshake itself fails: no RPC reaches the server.
        with grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca_pem)) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                gallery_pb2_grpc.GalleryStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # Plaintext to a TLS port gets nowhere either.
        with grpc.insecure_channel(f"localhost:{port}") as channel:
            with pytest.raises(grpc.RpcError):
                gallery_pb2_grpc.GalleryStub(channel).ListCollections(pb.ListCollectionsRequest(), timeout=10)
    audit.close()
    identities = [(r["method"], r["identity"], r["code"]) for r in read_audit(gallery.store)]
    assert identities == [("CreateCollection", "admin", "OK"), ("ListCollections", "door-3-reader", "OK"),
                          ("DeleteCollection", "door-3-reader", "PERMISSION_DENIED")]


def test_tls_without_client_certificates_still_needs_a_token(gallery, pki):
    paths, ca_pem, _, _ = pki
    credentials = _tls_credentials("localhost", str(paths["server.crt"]), str(paths["server.key"]), "",
                                   "searcher", insecure=False)
    server, audit, registry = _served(gallery, credentials)
    token = registry.create("reader", "searcher")
    with server as (_, port), grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials(ca_pem)) as ch:
        stub = gallery_pb2_grpc.GalleryStub(ch)
        with pytest.raises(grpc.RpcError) as anonymous:
            stub.ListCollections(pb.ListCollectionsRequest())
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.ListCollections(pb.ListCollectionsRequest(),
                                    metadata=[("authorization", f"Bearer {token}")]).collections == []
    audit.close()
