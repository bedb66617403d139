"""A real Kubernetes control plane for the tests: etcd and kube-apiserver from `hack/testenv/`.

Everything here is real: `etcd`, `kube-apiserver` and `kubectl` are the upstream programs, built
from pinned Go modules by `hack/testenv/build.sh` (cached outside the checkout, so only the first
build costs minutes). `start_control_plane()` runs etcd and kube-apiserver on free loopback ports
in a fresh temporary folder with freshly generated certificates (a CA, a serving certificate, an
admin client certificate in `system:masters`, a service-account signing key), waits until
`/readyz` answers, writes a kubeconfig and hands back a `Cluster`. Nothing is faked; the only
thing missing compared with a full cluster is the controller manager and the scheduler (no pods
run, no garbage collector, namespaces are not finalized on their own - `delete_namespace()` does
that part itself).

`connect_existing()` points the same `Cluster` API at a cluster that already runs (kind, k3d),
which the tests use when `PMSCTL_TEST_KUBECONFIG` is set.

Processes are started in their own process groups with a parent-death signal and an `atexit`
hook, so they go away when the test session ends, fails or is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import datetime as dt
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from timing import wait_until

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "testenv" / "build.sh"

#: Point the tests at an existing cluster instead of starting one (a kubeconfig path).
ENV_KUBECONFIG = "PMSCTL_TEST_KUBECONFIG"
#: Use etcd/kube-apiserver/kubectl from this folder instead of running build.sh.
ENV_BIN_DIR = "PMSCTL_TESTENV_BIN"
#: Keep the control plane's temporary folder (logs, certificates, etcd data) after the session.
ENV_KEEP = "PMSCTL_TESTENV_KEEP"

#: How long etcd plus kube-apiserver may take to become ready (a loaded 2-core machine is slow).
START_TIMEOUT_S = 120.0
#: The default timeout of one kubectl call.
KUBECTL_TIMEOUT_S = 60.0


class TestenvError(RuntimeError):
    """The testenv could not be built, started or reached; the message says why and what to do."""

    __test__ = False  # a name starting with "Test" is not a pytest test class


class KubectlError(RuntimeError):
    """kubectl exited non-zero while the caller expected success; carries the completed run."""

    def __init__(self, message: str, result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(message)
        self.result = result


# --------------------------------------------------------------------------------------------
# Binaries


def testenv_binaries(progress: IO[str] | None = None) -> Path:
    """Return the folder holding `etcd`, `kube-apiserver` and `kubectl`, building it if needed.

    Runs `hack/testenv/build.sh` (which returns at once when the build is cached, waits for a
    concurrent build and builds otherwise), copying its progress lines to `progress`. Raises
    `TestenvError` with the build's own message (for example what to install) when it fails.
    """
    override = os.environ.get(ENV_BIN_DIR)
    if override:
        folder = Path(override)
        missing = [b for b in ("etcd", "kube-apiserver", "kubectl") if not (folder / b).is_file()]
        if missing:
            raise TestenvError(
                f"{ENV_BIN_DIR}={override} lacks {', '.join(missing)}; unset it to build the testenv"
            )
        return folder
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    stderr_lines: list[str] = []

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_lines.append(line)
            # A cached build says so in one line; only a real build is worth showing.
            if progress is not None and not line.startswith("testenv: cached"):
                progress.write(line)
                progress.flush()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    code = proc.wait()
    pumper.join(timeout=5)
    if code != 0:
        tail = "".join(stderr_lines[-20:]).rstrip()
        raise TestenvError(f"hack/testenv/build.sh failed (exit {code}):\n{tail}")
    lines = stdout.strip().splitlines()
    if not lines:
        raise TestenvError("hack/testenv/build.sh printed no folder on its last line")
    return Path(lines[-1])


# --------------------------------------------------------------------------------------------
# Certificates


@dataclass(frozen=True)
class Certificates:
    """PEM files of one control plane: CA, serving pair, admin client pair, service-account key."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_pub: Path


def make_certificates(folder: Path) -> Certificates:
    """Generate a fresh CA and the certificates kube-apiserver and its admin client need.

    EC P-256 keys keep generation instant. The admin's certificate has CN `admin` and O
    `system:masters`, which RBAC treats as cluster-admin.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(hours=1)
    not_after = now + dt.timedelta(days=7)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def write_key(path: Path, k: ec.EllipticCurvePrivateKey) -> None:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        path.chmod(0o600)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = key()
    ca_name = name("pmsctl-testenv-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, k: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier, sans: Any
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256())

    serving_key = key()
    serving_cert = leaf(
        name("kube-apiserver"),
        serving_key,
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
        ],
    )
    admin_key = key()
    admin_cert = leaf(
        name("admin", "system:masters"), admin_key, ExtendedKeyUsageOID.CLIENT_AUTH, None
    )
    sa_key = key()

    certs = Certificates(
        ca_cert=folder / "ca.crt",
        ca_key=folder / "ca.key",
        serving_cert=folder / "apiserver.crt",
        serving_key=folder / "apiserver.key",
        admin_cert=folder / "admin.crt",
        admin_key=folder / "admin.key",
        service_account_key=folder / "sa.key",
        service_account_pub=folder / "sa.pub",
    )
    pem = serialization.Encoding.PEM
    certs.ca_cert.write_bytes(ca_cert.public_bytes(pem))
    write_key(certs.ca_key, ca_key)
    certs.serving_cert.write_bytes(serving_cert.public_bytes(pem))
    write_key(certs.serving_key, serving_key)
    certs.admin_cert.write_bytes(admin_cert.public_bytes(pem))
    write_key(certs.admin_key, admin_key)
    write_key(certs.service_account_key, sa_key)
    certs.service_account_pub.write_bytes(
        sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return certs


def write_kubeconfig(path: Path, server: str, certs: Certificates) -> None:
    """Write a self-contained kubeconfig (data embedded) for the admin identity."""
    import base64

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testenv",
                "cluster": {"server": server, "certificate-authority-data": b64(certs.ca_cert)},
            }
        ],
        "users": [
            {
                "name": "admin",
                "user": {
                    "client-certificate-data": b64(certs.admin_cert),
                    "client-key-data": b64(certs.admin_key),
                },
            }
        ],
        "contexts": [
            {
                "name": "testenv",
                "context": {"cluster": "testenv", "user": "admin", "namespace": "default"},
            }
        ],
        "current-context": "testenv",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)


# --------------------------------------------------------------------------------------------
# Processes


#: Ports handed out by `free_port` in this process (never the same one twice).
_HANDED_OUT: set[int] = set()
#: Below Linux's ephemeral range (32768-60999): the kernel never gives these to a `bind(port 0)`
#: or an outgoing connection, so a port picked here cannot be taken by a simulator, a client or
#: another test's server between the pick and the bind of the process it is meant for.
_PORT_RANGE = (20000, 32000)


def free_port() -> int:
    """A TCP port nothing listens on right now, on 127.0.0.1 and 0.0.0.0, outside the kernel's
    ephemeral range and not handed out before in this process."""
    rng = secrets.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*_PORT_RANGE)
        if port in _HANDED_OUT:
            continue
        try:
            for host in ("0.0.0.0", "127.0.0.1"):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind((host, port))
        except OSError:
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} after 200 tries")


_PR_SET_PDEATHSIG = 1
try:
    _prctl: Callable[..., int] | None = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: the kernel sends SIGKILL to the child when the
    # thread that started it dies, so a killed pytest leaves no etcd behind.
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 10.0) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def _spawn(name: str, argv: Sequence[str], log: Path) -> _Process:
    # PDEATHSIG is tied to the starting *thread*; only arm it from the main thread, where a
    # pytest session lives, so a worker thread's exit never kills the control plane.
    preexec = _die_with_parent if threading.current_thread() is threading.main_thread() else None
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=preexec,
        )
    return _Process(name, popen, log)


# --------------------------------------------------------------------------------------------
# The cluster handle


@dataclass
class Cluster:
    """A reachable API server and how to talk to it: kubeconfig, URL, kubectl, Python client.

    `kubectl(*args)` runs the testenv's kubectl against this cluster; `api_client` is a
    `kubernetes.client.ApiClient` configured from the same kubeconfig. `environ()` is the
    process environment with `KUBECONFIG` set, for running `pmsctl` or an operator as a
    subprocess. `external` is true when the cluster was not started by this harness.
    """

    kubeconfig: Path
    server: str
    kubectl_path: Path
    external: bool = False
    startup_seconds: float = 0.0
    _api_client: Any = field(default=None, repr=False)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = KUBECTL_TIMEOUT_S,
    ) -> subprocess.CompletedProcess[str]:
        """Run `kubectl --kubeconfig <ours> ARGS`; with check, raise KubectlError on failure."""
        argv = [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.environ(),
        )
        if check and result.returncode != 0:
            raise KubectlError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stderr.strip() or result.stdout.strip()}",
                result,
            )
        return result

    def environ(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """os.environ with KUBECONFIG pointing at this cluster (plus `extra`)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        if extra:
            env.update(extra)
        return env

    @property
    def api_client(self) -> Any:
        """A shared `kubernetes.client.ApiClient` for this cluster (created on first use)."""
        if self._api_client is None:
            self._api_client = self.new_api_client()
        return self._api_client

    def new_api_client(self) -> Any:
        """A fresh `kubernetes.client.ApiClient` from the kubeconfig; the caller closes it."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Close the shared Python client (the processes are the ControlPlane's)."""
        if self._api_client is not None:
            with contextlib.suppress(Exception):
                self._api_client.close()
            self._api_client = None


# --------------------------------------------------------------------------------------------
# The control plane


class ControlPlane:
    """etcd plus kube-apiserver in one temporary folder; `start()` then `stop()` (idempotent).
    `apiserver_args` are added to kube-apiserver's flags (an audit log, say)."""

    def __init__(
        self, bin_dir: Path, workdir: Path | None = None, apiserver_args: Sequence[str] = ()
    ) -> None:
        self.bin_dir = bin_dir
        self.apiserver_args = list(apiserver_args)
        if workdir is None:
            _sweep_stale_workdirs()
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=WORKDIR_PREFIX))
        self._owns_workdir = workdir is None
        (self.workdir / "owner.pid").write_text(str(os.getpid()))
        self._procs: list[_Process] = []
        self.cluster: Cluster | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> Cluster:
        """Start both processes, wait for `/readyz`, write the kubeconfig; retry a port race."""
        atexit.register(self.stop)
        began = time.monotonic()
        certs = make_certificates(self.workdir / "pki")
        last_error: TestenvError | None = None
        for attempt in range(3):
            try:
                cluster = self._start_once(certs, began + timeout, attempt)
            except _PortTaken as exc:
                last_error = TestenvError(str(exc))
                self._stop_processes()
                continue
            except BaseException:
                self.stop()
                raise
            cluster.startup_seconds = time.monotonic() - began
            self.cluster = cluster
            return cluster
        self.stop()
        assert last_error is not None
        raise last_error

    def _start_once(self, certs: Certificates, deadline: float, attempt: int) -> Cluster:
        etcd_client, etcd_peer, api_port = free_port(), free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{etcd_client}"
        data = self.workdir / f"etcd-{attempt}"
        etcd = _spawn(
            "etcd",
            [
                str(self.bin_dir / "etcd"),
                "--name=testenv",
                f"--data-dir={data}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=testenv=http://127.0.0.1:{etcd_peer}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
        )
        self._procs.append(etcd)
        _wait_http(etcd, f"{etcd_url}/health", deadline, context=None)

        server = f"https://127.0.0.1:{api_port}"
        apiserver = _spawn(
            "kube-apiserver",
            [
                str(self.bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={certs.serving_cert}",
                f"--tls-private-key-file={certs.serving_key}",
                f"--client-ca-file={certs.ca_cert}",
                f"--service-account-issuer={server}",
                f"--service-account-key-file={certs.service_account_pub}",
                f"--service-account-signing-key-file={certs.service_account_key}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--authorization-mode=RBAC",
                "--allow-privileged=true",
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--event-ttl=30m",
                "--v=1",
                *self.apiserver_args,
            ],
            self.workdir / "kube-apiserver.log",
        )
        self._procs.append(apiserver)
        tls = ssl.create_default_context(cafile=str(certs.ca_cert))
        tls.load_cert_chain(str(certs.admin_cert), str(certs.admin_key))
        _wait_http(apiserver, f"{server}/readyz", deadline, context=tls)
        # The bootstrap controller creates `default` right after readiness; tests may use it.
        _wait_http(apiserver, f"{server}/api/v1/namespaces/default", deadline, context=tls)

        kubeconfig = self.workdir / "kubeconfig"
        write_kubeconfig(kubeconfig, server, certs)
        return Cluster(kubeconfig=kubeconfig, server=server, kubectl_path=self.bin_dir / "kubectl")

    def _stop_processes(self) -> None:
        for proc in reversed(self._procs):
            with contextlib.suppress(Exception):
                proc.stop()
        self._procs.clear()

    def stop(self) -> None:
        """Stop kube-apiserver, then etcd, and remove the folder (unless PMSCTL_TESTENV_KEEP)."""
        if self.cluster is not None:
            self.cluster.close()
        self._stop_processes()
        if self._owns_workdir and not os.environ.get(ENV_KEEP):
            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)


WORKDIR_PREFIX = "pmsctl-testenv-"


def _sweep_stale_workdirs() -> None:
    """Remove control-plane folders whose owning process died without cleaning up (SIGKILL)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        try:
            owner = int((folder / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            continue


class _PortTaken(TestenvError):
    """A process lost the race for its port; the caller retries on new ports."""


def _wait_http(proc: _Process, url: str, deadline: float, context: ssl.SSLContext | None) -> None:
    """Poll `url` until it answers 200; fail fast with the log tail when the process exits."""
    last = [""]

    def answered() -> bool:
        code = proc.popen.poll()
        if code is not None:
            tail = proc.log_tail()
            if re.search(r"address already in use", tail):
                raise _PortTaken(f"{proc.name} lost a port race:\n{tail}")
            raise TestenvError(f"{proc.name} exited with {code} while starting; its log:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                if answer.status == 200:
                    return True
                last[0] = f"HTTP {answer.status}"
        except urllib.error.HTTPError as exc:
            last[0] = f"HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last[0] = str(exc)
        return False

    try:
        wait_until(answered, max(0.0, deadline - time.monotonic()), url, step=0.1)
    except AssertionError:
        raise TestenvError(
            f"{proc.name} did not answer {url} in time (last: {last[0]}); its log:\n"
            f"{proc.log_tail()}"
        ) from None


@contextlib.contextmanager
def start_control_plane(
    bin_dir: Path | None = None,
    progress: IO[str] | None = None,
    apiserver_args: Sequence[str] = (),
) -> Iterator[Cluster]:
    """Build (if needed) and start a control plane; yield its Cluster; always tear it down."""
    plane = ControlPlane(bin_dir or testenv_binaries(progress), apiserver_args=apiserver_args)
    try:
        yield plane.start()
    finally:
        plane.stop()


def connect_existing(kubeconfig: Path, progress: IO[str] | None = None) -> Cluster:
    """A Cluster for a cluster that already runs (kind, k3d): its server comes from the kubeconfig.

    kubectl comes from PATH when present, otherwise from the testenv build.
    """
    if not kubeconfig.is_file():
        raise TestenvError(f"{ENV_KUBECONFIG}={kubeconfig}: no such file")
    config = yaml.safe_load(kubeconfig.read_text()) or {}
    context_name = config.get("current-context")
    contexts = {c["name"]: c.get("context", {}) for c in config.get("contexts") or []}
    clusters = {c["name"]: c.get("cluster", {}) for c in config.get("clusters") or []}
    context = contexts.get(context_name)
    if context is None or context.get("cluster") not in clusters:
        raise TestenvError(
            f"{ENV_KUBECONFIG}={kubeconfig}: current-context {context_name!r} names no cluster"
        )
    server = str(clusters[context["cluster"]].get("server", ""))
    on_path = shutil.which("kubectl")
    kubectl = Path(on_path) if on_path else testenv_binaries(progress) / "kubectl"
    return Cluster(kubeconfig=kubeconfig, server=server, kubectl_path=kubectl, external=True)


# --------------------------------------------------------------------------------------------
# Helpers the fixtures use


def namespace_name(test_name: str) -> str:
    """A DNS-1123 namespace name derived from a test's name, unique per call (<= 63 chars)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:48].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


def load_documents(path: Path) -> list[dict[str, Any]]:
    """Every non-empty YAML document in a file, as dicts."""
    with path.open() as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def crd_names(folder: Path) -> list[str]:
    """The metadata.name of every CustomResourceDefinition in `folder`'s *.yaml files."""
    names: list[str] = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        for doc in load_documents(path):
            if doc.get("kind") == "CustomResourceDefinition":
                names.append(str(doc["metadata"]["name"]))
    return names


def install_crds(cluster: Cluster, folder: Path, timeout: float = 60.0) -> list[str]:
    """Apply every CRD in `folder` server-side and wait until each is Established and served."""
    names = crd_names(folder)
    if not names:
        raise TestenvError(f"{folder} holds no CustomResourceDefinition; run `make crds`")
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
    for name in names:
        cluster.kubectl(
            "wait", "--for=condition=Established", f"crd/{name}", f"--timeout={int(timeout)}s"
        )
    # Established means the API is served, but discovery (what kubectl resolves `pwb` with)
    # can lag a moment behind; wait until each resource lists.
    deadline = time.monotonic() + timeout
    for name in names:
        _wait_served(cluster, name, deadline)
    return names


def _wait_served(cluster: Cluster, name: str, deadline: float) -> None:
    """Wait until `kubectl get name` lists (discovery serves the resource)."""
    results: list[subprocess.CompletedProcess[str]] = []

    def listed() -> bool:
        results.append(cluster.kubectl("get", name, "--all-namespaces", "-o", "name", check=False))
        return results[-1].returncode == 0

    try:
        wait_until(listed, max(0.0, deadline - time.monotonic()), f"{name} served", step=0.2)
    except AssertionError:
        raise TestenvError(
            f"CRD {name} is Established but not served:\n{results[-1].stderr}"
        ) from None


def apply_practice(
    cluster: Cluster, doc: dict[str, Any], namespace: str, url: str, credentials: Mapping[str, str]
) -> None:
    """`kubectl apply` a PracticeWriteback `doc` (changed in place: put in `namespace`, pointed
    at `url`) together with the Secret its `credentialsSecretRef` names, holding `credentials`."""
    doc["metadata"]["namespace"] = namespace
    doc["spec"]["pms"]["url"] = url
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": doc["spec"]["pms"]["credentialsSecretRef"]["name"],
            "namespace": namespace,
        },
        "stringData": dict(credentials),
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([secret, doc]))


def delete_namespace(cluster: Cluster, name: str, timeout: float = 30.0) -> None:
    """Delete a test namespace and what the tests left in it.

    Custom resources in it lose their finalizers first (no operator may be running to remove
    them). On the harness's own control plane there is no namespace controller, so the function
    empties the common kinds itself and finalizes the namespace through `/finalize`; on an
    existing cluster it leaves that to the cluster's controllers.
    """
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = cluster.api_client
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    extensions = client.ApiextensionsV1Api(api)
    with contextlib.suppress(ApiException):
        for crd in extensions.list_custom_resource_definition().items:
            if crd.spec.scope != "Namespaced":
                continue
            group, plural = crd.spec.group, crd.spec.names.plural
            version = next(v.name for v in crd.spec.versions if v.storage)
            objects: dict[str, Any] = custom.list_namespaced_custom_object(  # type: ignore[assignment]
                group, version, name, plural
            )
            for obj in objects.get("items", []):
                obj_name = obj["metadata"]["name"]
                if obj["metadata"].get("finalizers"):
                    with contextlib.suppress(ApiException):
                        custom.patch_namespaced_custom_object(
                            group,
                            version,
                            name,
                            plural,
                            obj_name,
                            {"metadata": {"finalizers": None}},
                        )
                with contextlib.suppress(ApiException):
                    custom.delete_namespaced_custom_object(group, version, name, plural, obj_name)
    if not cluster.external:
        for delete in (
            core.delete_collection_namespaced_secret,
            core.delete_collection_namespaced_config_map,
            core.delete_collection_namespaced_event,
            core.delete_collection_namespaced_service_account,
        ):
            with contextlib.suppress(ApiException):
                delete(name)
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status == 404:
            return
        raise
    if cluster.external:
        return

    def gone() -> bool:
        try:
            ns = core.read_namespace(name)
        except ApiException as exc:
            if exc.status == 404:
                return True
            raise
        if ns.spec is not None:
            ns.spec.finalizers = []
        with contextlib.suppress(ApiException):
            core.replace_namespace_finalize(name, ns)
        return False

    try:
        wait_until(gone, timeout, f"namespace {name} deleted", step=0.1)
    except AssertionError:
        raise TestenvError(f"namespace {name} was not deleted within {timeout:.0f}s") from None


def default_progress() -> IO[str]:
    """Where build progress goes when nobody asked: the terminal's stderr."""
    return sys.__stderr__ or sys.stderr


class WebhookThread:
    """The operator's webhook server (`reconciler.kube.webhooks.WebhookServer`) on a free
    loopback port with a fresh self-signed CA, run by an event loop in a daemon thread so that
    synchronous tests and the API server can call it. `lookup` (admission) is optional."""

    def __init__(self, lookup: Any = None) -> None:
        import asyncio

        from reconciler.kube import webhooks

        self.tls = webhooks.self_signed(["127.0.0.1", "localhost"])
        self.server = webhooks.WebhookServer(self.tls, host="127.0.0.1", port=0, lookup=lookup)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """`https://127.0.0.1:<port>`."""
        return f"https://127.0.0.1:{self.server.port}"

    def start(self) -> WebhookThread:
        """Start the loop and the server; return when it listens."""
        import asyncio

        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop the server (the API server's calls then fail to connect) and the loop."""
        import asyncio

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(timeout=30)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def __enter__(self) -> WebhookThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def crds_with_webhook_url(source: Path, target: Path, webhook: WebhookThread) -> Path:
    """Copies of the CRDs in `source`, written to `target`, whose conversion webhooks call
    `webhook` by URL with its CA (the API server reaches the test process on loopback)."""
    from reconciler.api.crdgen import CONVERT_PATH

    for path in sorted(source.glob("*.yaml")):
        docs = load_documents(path)
        for doc in docs:
            conversion = (doc.get("spec") or {}).get("conversion") or {}
            if conversion.get("strategy") == "Webhook":
                conversion["webhook"]["clientConfig"] = {
                    "url": webhook.base_url + CONVERT_PATH,
                    "caBundle": webhook.tls.ca_bundle(),
                }
        (target / path.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return target
