"""The operator's webhooks: one HTTPS port (aiohttp) for the API server's calls.

- `POST /convert`: the CRD's conversion webhook. A ConversionReview (apiextensions.k8s.io/v1)
  in, the objects converted by the pure `reconciler.api.convert` out. The API server cannot
  store or serve a PracticeWriteback in another version than the stored one without it, so the
  CRD's conversion cannot be "ignored": run the operator (this server) with 2 replicas or more
  in production, and read the resources in the storage version (v1), which needs no call here.
- `POST /validate`: validating admission (admission.k8s.io/v1) of PracticeWriteback creates
  and updates: refuses a second resource with a `practiceId` another resource already has,
  naming that resource (the engine's reconcile-time DuplicatePracticeId stays as the backstop),
  and warns when the credentials Secret does not exist yet. Registered with
  `failurePolicy: Ignore` (deploy/webhooks/): a down operator must not block applies.

TLS: in a cluster, cert-manager issues the serving certificate (deploy/webhooks/). For
development, `self_signed()` makes a CA and a serving certificate at start, and
`ca_bundle()` is what goes into the CRD's `caBundle` (`pmsctl operator --webhook-self-signed`).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import logging
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from reconciler import GROUP, PLURAL
from reconciler.api.convert import ConversionError, convert

log = logging.getLogger("pmsctl.webhooks")

CRD_NAME = f"{PLURAL}.{GROUP}"
CONVERT_PATH = "/convert"
VALIDATE_PATH = "/validate"
#: The request body limit: a ConversionReview of a full list page stays far below it.
MAX_BODY = 16 * 1024 * 1024


class Lookup(Protocol):
    """What admission needs from the cluster (`KubeLookup`; a dict-backed fake in tests)."""

    def practices_with_id(self, practice_id: str) -> list[str]:
        """`namespace/name` of every PracticeWriteback whose spec.practiceId is `practice_id`."""
        ...

    def secret_exists(self, namespace: str, name: str) -> bool:
        """Whether the Secret exists (True when it cannot be told: admission only warns)."""
        ...


# --- the pure review handlers ------------------------------------------------------------------


def review_conversion(review: Mapping[str, Any]) -> dict[str, Any]:
    """The ConversionReview response for a ConversionReview request."""
    request = review.get("request") or {}
    uid = request.get("uid", "")
    desired = request.get("desiredAPIVersion", "")
    try:
        converted = [convert(obj, desired) for obj in request.get("objects") or ()]
    except ConversionError as exc:
        result: dict[str, Any] = {"status": "Failure", "message": str(exc)}
        converted = []
    else:
        result = {"status": "Success"}
    return {
        "apiVersion": review.get("apiVersion", "apiextensions.k8s.io/v1"),
        "kind": "ConversionReview",
        "response": {"uid": uid, "convertedObjects": converted, "result": result},
    }


def review_admission(review: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    """The AdmissionReview response for a PracticeWriteback create or update."""
    request = review.get("request") or {}
    response: dict[str, Any] = {"uid": request.get("uid", ""), "allowed": True}
    obj = request.get("object") or {}
    spec = obj.get("spec") if isinstance(obj, Mapping) else None
    if request.get("operation") in ("CREATE", "UPDATE") and isinstance(spec, Mapping):
        namespace = request.get("namespace") or obj.get("metadata", {}).get("namespace", "")
        name = request.get("name") or obj.get("metadata", {}).get("name", "")
        me = f"{namespace}/{name}"
        practice_id = spec.get("practiceId")
        others = (
            [key for key in lookup.practices_with_id(str(practice_id)) if key != me]
            if practice_id
            else []
        )
        if others:
            response["allowed"] = False
            response["status"] = {
                "code": 409,
                "reason": "AlreadyExists",
                "message": f"spec.practiceId: {practice_id!r} is already used by "
                f"PracticeWriteback {', '.join(sorted(others))}; a practice has one resource",
            }
        secret = (spec.get("pms") or {}).get("credentialsSecretRef", {}).get("name")
        if secret and not lookup.secret_exists(namespace, str(secret)):
            response["warnings"] = [
                f"spec.pms.credentialsSecretRef: Secret {namespace}/{secret} does not exist yet; "
                "the practice stays not Ready until it does"
            ]
    return {
        "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
        "kind": "AdmissionReview",
        "response": response,
    }


# --- the cluster lookups -----------------------------------------------------------------------


class KubeLookup:
    """`Lookup` over the Kubernetes API (the operator's ApiClient)."""

    def __init__(self, api_client: Any) -> None:
        self._api = api_client

    def practices_with_id(self, practice_id: str) -> list[str]:
        from kubernetes import client

        listing: Any = client.CustomObjectsApi(self._api).list_cluster_custom_object(
            GROUP, "v1", PLURAL, _request_timeout=5
        )
        items: list[dict[str, Any]] = listing.get("items") or []
        return [
            f"{o['metadata'].get('namespace', '')}/{o['metadata']['name']}"
            for o in items
            if (o.get("spec") or {}).get("practiceId") == practice_id
        ]

    def secret_exists(self, namespace: str, name: str) -> bool:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            client.CoreV1Api(self._api).read_namespaced_secret(name, namespace, _request_timeout=5)
        except ApiException as exc:
            return bool(exc.status != 404)
        return True


# --- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tls:
    """PEM text of a CA certificate, and of a serving certificate and key it signed."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    def ca_bundle(self) -> str:
        """The CA as a CRD or webhook configuration's `caBundle` (base64 of the PEM)."""
        return base64.b64encode(self.ca_pem).decode("ascii")

    def server_context(self) -> ssl.SSLContext:
        """An SSLContext serving the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory() as tmp:
            cert, key = Path(tmp) / "tls.crt", Path(tmp) / "tls.key"
            cert.write_bytes(self.cert_pem)
            key.write_bytes(self.key_pem)
            key.chmod(0o600)
            context.load_cert_chain(cert, key)
        return context

    @classmethod
    def from_files(cls, cert: Path, key: Path, ca: Path | None = None) -> Tls:
        """Read a mounted certificate (cert-manager's tls.crt, tls.key and ca.crt)."""
        return cls(
            ca_pem=ca.read_bytes() if ca else b"",
            cert_pem=cert.read_bytes(),
            key_pem=key.read_bytes(),
        )


def self_signed(hosts: Sequence[str], days: int = 365) -> Tls:
    """A new CA and a serving certificate for `hosts` (DNS names or IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pmsctl webhooks CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return Tls(
        ca_pem=ca.public_bytes(pem),
        cert_pem=cert.public_bytes(pem),
        key_pem=key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )


def service_hosts(service: str, namespace: str) -> list[str]:
    """The DNS names the API server uses for a webhook Service."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
        "127.0.0.1",
    ]


# --- the server ----------------------------------------------------------------------------------


def _json_handler(
    review: Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]],
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        try:
            body = await request.json(loads=json.loads)
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, Mapping):
            return web.json_response({"error": "the body is not a review object"}, status=400)
        return web.json_response(await review(body))

    return handle


class WebhookServer:
    """The HTTPS server for all webhooks. `lookup` None serves conversion only."""

    def __init__(
        self, tls: Tls, host: str = "0.0.0.0", port: int = 9443, lookup: Lookup | None = None
    ) -> None:
        self.tls, self.host, self.port, self.lookup = tls, host, port, lookup
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        """The aiohttp application (routes: /convert, /validate when there is a lookup, /healthz)."""
        app = web.Application(client_max_size=MAX_BODY)

        async def conversion(body: Mapping[str, Any]) -> dict[str, Any]:
            return review_conversion(body)

        app.router.add_post(CONVERT_PATH, _json_handler(conversion))
        lookup = self.lookup
        if lookup is not None:

            async def admission(body: Mapping[str, Any]) -> dict[str, Any]:
                # the lookups are blocking Kubernetes client calls
                return await asyncio.to_thread(review_admission, body, lookup)

            app.router.add_post(VALIDATE_PATH, _json_handler(admission))

        async def healthz(_: web.Request) -> web.Response:
            return web.Response(text="ok")

        app.router.add_get("/healthz", healthz)
        return app

    async def start(self) -> None:
        """Listen; `self.port` is the bound port afterwards (pass 0 for a free one)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        site = web.SockSite(self._runner, sock, ssl_context=self.tls.server_context())
        await site.start()
        log.info("webhooks listening on https://%s:%d", self.host, self.port)

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def patch_crd_ca_bundle(
    api_client: Any, crd_name: str, ca_bundle: str, url: str | None = None
) -> None:
    """Write `ca_bundle` into the CRD's conversion webhook (and a URL instead of the Service when
    `url` is given: a development operator outside the cluster)."""
    from kubernetes import client

    config: dict[str, Any] = {"caBundle": ca_bundle}
    if url is not None:
        config["url"] = url
        config["service"] = None
    body = {"spec": {"conversion": {"webhook": {"clientConfig": config}}}}
    client.ApiextensionsV1Api(api_client).patch_custom_resource_definition(crd_name, body)
