"""Write the example kustomize fleet: one base per PMS, a component, and one overlay per practice.

    python examples/fleet/generate.py                       # the 50 practices in examples/fleet
    python examples/fleet/generate.py --count 10000 --out /tmp/fleet

Deterministic: the same `--count` always writes the same bytes, so the committed example is this
script's output and a test checks that it still is. Layout (paths relative to `--out`):

    kustomization.yaml                      the fleet: namespace, and every practice overlay
    base/{opendental,dentrix,eaglesoft}/    the shared settings of each PMS (one PracticeWriteback)
    components/sms-writeback-off/           a Component that turns outgoing SMS writeback off
    practices/<name>/kustomization.yaml     one overlay per practice: identity, PMS address, provider

One practice in 10 (an Open Dental one) uses the component; two in 20 (one Open Dental, one
Dentrix) override their outgoing SMS writeback locally (kept on, with their own note type), which
`pmsctl diff --kustomize` reports as "kept by a local override" when a base turns it off.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: (folder, PMS type, the URL's path, provider id prefix, share of the fleet out of 10)
PMS = (
    ("opendental", "OpenDental", "/api/v1", "", 5),
    ("dentrix", "Dentrix", "/bridge/v1", "DDS", 3),
    ("eaglesoft", "Eaglesoft", "/bridge/v1", "DCM", 2),
)
FIRST = (
    "bright",
    "sunny",
    "lakeside",
    "river",
    "maple",
    "cedar",
    "harbor",
    "summit",
    "park",
    "oak",
)
SECOND = ("smiles", "dental", "family-dentistry", "dental-care", "orthodontics")

BASE = """\
# Shared settings of every {pms} practice; each practice's overlay sets its identity.
apiVersion: writeback.dental.dev/v1alpha1
kind: PracticeWriteback
metadata:
  name: practice
spec:
  practiceId: practice
  pms:
    type: {pms}
    url: https://pms.invalid{path}
    credentialsSecretRef:
      name: practice-pms
    timeoutSeconds: 10
  providerId: "1"
  writeback:
    outgoingSms: {{allow: true, noteType: Text Message}}
    incomingSms: {{allow: true, noteType: Text Message}}
    outgoingEmail: {{allow: true, noteType: Email}}
    incomingCall: {{allow: true, noteType: Phone Call}}
    outgoingCall: {{allow: true, noteType: Phone Call}}
    missedCall: {{allow: true, noteType: Missed Call}}
    patientNote: {{allow: true, noteType: Patient Note}}
    taskNote: {{allow: false}}
    insuranceVerification: {{allow: true, noteType: Insurance Verification}}
  sync:
    appointmentStatus: {{enabled: true, interval: 15s}}
    appointments: {{enabled: true, interval: 60s}}
    patients: {{enabled: true, interval: 30s}}
"""

COMPONENT = """\
# Turns outgoing SMS writeback off (practices whose patients opted out of SMS notes).
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
patches:
  - target: {kind: PracticeWriteback}
    patch: |-
      - op: replace
        path: /spec/writeback/outgoingSms
        value: {allow: false}
"""

OVERLAY = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../base/{base}
{components}patches:
  - target: {{kind: PracticeWriteback}}
    options: {{allowNameChange: true}}
    patch: |-
      apiVersion: writeback.dental.dev/v1alpha1
      kind: PracticeWriteback
      metadata:
        name: {name}
      spec:
        practiceId: {name}
        displayName: {display}
        pms:
          url: https://{name}.pms.example.com{path}
          credentialsSecretRef:
            name: {name}-pms
        providerId: "{provider}"
{override}"""

LOCAL_SMS = """\
        writeback:
          outgoingSms: {allow: true, noteType: SMS Reminder}
"""


def practices(count: int) -> list[tuple[str, tuple[str, str, str, str, int]]]:
    """(name, PMS row) of each practice, in a fixed order: 5 in 10 Open Dental, 3 Dentrix, 2
    Eaglesoft."""
    slots = [row for row in PMS for _ in range(row[4])]
    out = []
    for i in range(count):
        words = f"{FIRST[i % len(FIRST)]}-{SECOND[(i // len(FIRST)) % len(SECOND)]}"
        out.append((f"{words}-{i + 1:05d}", slots[i % len(slots)]))
    return out


def write(out: Path, count: int) -> None:
    """Write the fleet of `count` practices under `out` (its base/, components/, practices/ and
    kustomization.yaml are replaced)."""
    for sub in ("base", "components", "practices"):
        shutil.rmtree(out / sub, ignore_errors=True)
    for folder, pms, path, _, _ in PMS:
        base = out / "base" / folder
        base.mkdir(parents=True)
        (base / "practice.yaml").write_text(BASE.format(pms=pms, path=path))
        (base / "kustomization.yaml").write_text("resources:\n  - practice.yaml\n")
    component = out / "components" / "sms-writeback-off"
    component.mkdir(parents=True)
    (component / "kustomization.yaml").write_text(COMPONENT)
    names = []
    for i, (name, (folder, _, path, prefix, _)) in enumerate(practices(count)):
        names.append(name)
        overlay = out / "practices" / name
        overlay.mkdir(parents=True)
        components = "components:\n  - ../../components/sms-writeback-off\n" if i % 10 == 3 else ""
        display = name.rsplit("-", 1)[0].replace("-", " ").title()
        (overlay / "kustomization.yaml").write_text(
            OVERLAY.format(
                base=folder,
                components=components,
                name=name,
                display=display,
                path=path,
                provider=f"{prefix}{i % 7 + 1}",
                override=LOCAL_SMS if i % 20 in (1, 7) else "",
            )
        )
    fleet = "".join(f"  - practices/{n}\n" for n in names)
    (out / "kustomization.yaml").write_text(
        "# The fleet: every practice overlay, in one namespace (generated by generate.py).\n"
        "# originAnnotations: each rendered object names its source file, so\n"
        "# `kubectl kustomize . | pmsctl validate -` points at the file to fix.\n"
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namespace: dental-practices\nbuildMetadata: [originAnnotations]\n"
        f"resources:\n{fleet}"
    )


def main() -> None:
    """Parse the arguments and write the fleet."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="number of practices (default 50)")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write (default: here)")
    args = parser.parse_args()
    write(args.out, args.count)


if __name__ == "__main__":
    main()
